"""Prometheus metrics on the metrics port (9187): CloudNativePG's built-in collector, the
default and custom query sets, archive visibility and CNPG-I plugin metrics.

Import :mod:`instance_manager.metrics.server` only once the postmaster is starting: it
pulls in aiohttp and, on the first scrape, psycopg and PyYAML.
"""

METRICS_PATH = "/metrics"
