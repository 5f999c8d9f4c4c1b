"""The monitoring wing (issue 20): the Prometheus rule file and the Grafana dashboard that ship
with mxroute, generated from code (``python -m mxroute.monitoring deploy``).

Owns ``rules`` (alert and recording rules, PURE) and ``dashboard`` (the dashboard's JSON, PURE).
May import: nothing of mxroute (the metric names are its interface, docs/observability.md).
"""
