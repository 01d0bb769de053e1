"""The Celery app. Broker: Redis when REDIS_URL is set, otherwise a folder (kombu's filesystem
transport), so the embedded run has a real worker and beat without any server. The beat schedule
lives in settings.CELERY_BEAT_SCHEDULE; each entry calls one service through its task."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "realtime_platform.settings")

app = Celery("realtime_platform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
