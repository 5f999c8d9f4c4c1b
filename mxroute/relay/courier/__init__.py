"""The courier: carry one message to one destination over SMTP, following a routing plan.

May import: ``relay.envelope``, ``relay.dsn``, ``routing``, ``tls`` and the ground.
"""
