"""The Python client of Gazer: `from gazer import Client` (or AsyncClient); an error answer is
raised as ApiError."""

from gazer.client import AsyncClient, Client
from gazer.errors import ApiError, BadAnswer

__all__ = ["ApiError", "AsyncClient", "BadAnswer", "Client"]
