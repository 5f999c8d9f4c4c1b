"""The relay wing: a message from the SMTP intake, through the spool and the queue, to the courier.

``intake`` (aiosmtpd: validate, spool, reply), ``spool`` (durable files), ``queue``
(when to try whom; retries, expiry, bounces), ``courier`` (SMTP to the next hop),
``dsn`` (RFC 3464 reports), ``envelope`` (the plain data they share) and ``limiter``
(traffic shaping's counts: connection slots and token buckets, for the courier).
May import: ``routing``, ``tls``, ``identity``, ``dns`` and the ground. The intake never
imports the courier or the queue manager.
"""
