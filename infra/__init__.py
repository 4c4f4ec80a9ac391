"""Infrastructure beside the ML layer: the Redis job store, Celery settings, an embedded
redis-server, child processes and the settings shared by the API and the worker."""
