"""Celery application: reads CELERY_* settings and finds tasks in every app."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nephroweb.settings")

app = Celery("nephroweb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
