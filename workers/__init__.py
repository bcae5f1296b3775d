"""Processing steps, shared by the in-process executor and (later) Celery workers."""
