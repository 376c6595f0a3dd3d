"""Celery application: reads CELERY_* settings and finds tasks in every app.

A starting worker enqueues the tasks of unfinished runs again (nephroweb.task_recovery).
"""

import logging
import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nephroweb.settings")

app = Celery("nephroweb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
logger = logging.getLogger(__name__)


@worker_ready.connect
def _requeue_unfinished_tasks(**kwargs) -> None:
    from nephroweb.task_recovery import requeue_unfinished_tasks

    try:
        requeue_unfinished_tasks()
    except Exception:  # noqa: BLE001  a worker that cannot enqueue must still start
        logger.exception("Could not enqueue unfinished tasks again at worker start")
