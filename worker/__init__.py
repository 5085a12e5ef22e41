"""The Modcus worker: `celery -A worker worker` finds the Celery app here."""

from worker.app import app

__all__ = ["app"]
