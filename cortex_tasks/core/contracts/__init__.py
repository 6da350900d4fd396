"""What the gateway and the workers agree on: Celery task names and the messages sent to those tasks."""
