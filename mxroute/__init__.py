"""mxroute: a mail-routing resolver and durable SMTP smarthost relay."""

__version__ = "0.1.0"
