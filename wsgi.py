"""The WSGI entry point for gunicorn and the `flask` CLI."""
from app.startup import create_app_or_exit

app = create_app_or_exit()
