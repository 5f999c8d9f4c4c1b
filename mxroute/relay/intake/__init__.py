"""SMTP intake: the aiosmtpd server that validates, spools and replies.

``params`` (pure parsers: MAIL/RCPT arguments, DSN parameters, content checks, the
Received: field), ``recipient`` (PURE: the RCPT address checks, ``explain``'s verdict too),
``auth`` (the credentials file and AUTH), ``protocol`` (``RelaySMTP``: aiosmtpd's protocol
with what 1.4.6 lacks), ``wire`` (``LeanSMTP``: aiosmtpd's per-command machinery made lean,
bulk DATA reading and batched replies, issue 23), ``handler`` (``Intake``: validate, spool,
reply), ``sendercheck`` (the MAIL FROM null MX check), ``signing`` (DKIM before the 250) and
``clientname`` (the client's verified reverse name, issue 15 C5).
May import: ``relay.spool``, ``relay.envelope``, ``dns``, ``routing.plan``, ``identity.dkim``,
``identity.rdns`` and the ground;
never ``relay.courier`` or ``relay.queue``.
"""
