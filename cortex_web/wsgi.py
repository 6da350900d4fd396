"""WSGI entry point for gunicorn: `gunicorn cortex_web.wsgi:app`."""
from cortex_web import create_app

app = create_app()
