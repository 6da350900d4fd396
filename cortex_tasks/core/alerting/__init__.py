"""Alerts: the intake every detector raises through, the aggregation policy, the stored alerts and channels.

Delivery, Cortex's own rules and reports run on the workers (cortex_tasks/runtime/alerting)."""
