"""The Celery application of the full stack: Redis as broker, settings from ``UPLOADER_*``.

Settings fit long, CPU-heavy, idempotent work: a task is acknowledged only when it is
done (a worker killed mid-step means redelivery), each worker process takes one task at
a time, and a hard time limit kills a step that hangs (the pipeline's own soft limit
fails the upload before that, with a readable reason).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging

from uploader.settings import Settings

PROCESS_TASK = "uploader.process_upload"
WEBHOOKS_TASK = "uploader.deliver_webhooks"
SWEEP_TASK = "uploader.sweep"


@setup_logging.connect  # type: ignore[untyped-decorator]
def _keep_our_logging(**_: Any) -> None:
    """Celery leaves logging alone: our structured configuration stays in charge."""


def build_celery(settings: Settings) -> Celery:
    app = Celery("uploader", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.task_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_seconds,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_seconds,
            # Deployments (and test runs) sharing one Redis never see each other's tasks.
            "global_keyprefix": f"{settings.redis_prefix}:celery:",
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        beat_schedule={
            "sweep": {"task": SWEEP_TASK, "schedule": settings.cleanup_interval_seconds},
            # Deliveries due for a retry, and events whose wake-up was lost.
            **(
                {"webhooks": {"task": WEBHOOKS_TASK, "schedule": settings.webhook_poll_seconds}}
                if settings.webhook_url and settings.webhook_dispatcher == "auto"
                else {}
            ),
        },
    )
    return app
