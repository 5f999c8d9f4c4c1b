"""DMARC (RFC 7489): will mail from a From: domain pass at the receivers? (issue 14 §3)

``record`` is PURE (the policy record, §6.3/§6.4); ``orgdomain`` the organizational domain by
the Public Suffix List shipped in ``publicsuffixlist`` (§3.2); ``discover`` finds the record
through the shared resolver (§6.6.3); ``verdict`` is PURE (alignment, effective policy, the
fixes); ``author`` (PURE) reads the From: domain of a message; ``assess`` gathers the facts
(SPF ``check_host``, ``dkim check``) and judges. May import: ``dns``, ``identity`` and the ground.
"""
