"""Pydantic wire models shared by the service and the worker."""
