"""Django project for nephroweb; the Celery app is imported so tasks bind to it."""

from .celery import app as celery_app

__all__ = ["celery_app"]
