"""The service wing: ``mxroute serve`` as a process pair under systemd.

Owns the daemon (listeners, reload, shutdown), the delivery process and its link to
the intake, logging set-up, metrics and the sd_notify protocol.
May import: ``relay`` and everything below it.
"""
