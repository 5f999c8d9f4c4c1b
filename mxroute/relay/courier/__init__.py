"""The courier: carry one message to one destination over SMTP, following a routing plan.

``courier`` (the entry: ``Courier.deliver`` walks the plan), ``session``, ``transaction``,
``pipelining``, ``replies`` (pure), ``pool``, ``hosts``, ``attempt``, ``upstream`` (a routed
next hop: implicit TLS and AUTH, issue 16).
May import: ``relay.envelope``, ``relay.dsn``, ``routing``, ``tls`` and the ground.
"""
