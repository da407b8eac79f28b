"""The Celery worker: its app, thin tasks and the guard that refuses malformed queue items one by one."""
