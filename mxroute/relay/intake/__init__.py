"""SMTP intake: the aiosmtpd server that validates, spools and replies.

May import: ``relay.spool``, ``relay.envelope``, ``dns``, ``routing.plan`` and the ground;
never ``relay.courier`` or ``relay.queue``.
"""
