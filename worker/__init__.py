"""Gazer's Celery worker: thin tasks over core job functions."""
