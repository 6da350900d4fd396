"""What Cortex tells its operators about itself: structured logs (logs.py) and OpenTelemetry traces
(tracing.py), set up the same way in the gateway, the workers, Beat and `cortex up` (celery_signals.py for
the Celery processes). docs/logs-and-traces.md describes both for operators."""
