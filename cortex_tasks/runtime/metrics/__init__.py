"""A worker's Prometheus metrics: what it measures (instruments.py), the machine it runs on
(resources.py) and the HTTP port it answers scrapes on (exporter.py). docs/metrics.md lists them all."""
