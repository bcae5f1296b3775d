"""The Celery worker: its tasks call ``uploader.processing``; its configuration is
``uploader.processing.celery_app``."""
