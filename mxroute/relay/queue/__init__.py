"""The queue manager: when to try which recipients, and what to do with each outcome.

May import: ``relay.spool``, ``relay.dsn``, ``relay.envelope``, ``routing`` and the ground;
it reaches the courier only through the ``CourierLike`` protocol (``dispatch``). ``settle``,
the decisions after an attempt, is pure: no asyncio, socket or ssl, clock and rng injected.
"""
