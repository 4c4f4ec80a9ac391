"""The Python client of Gazer: `from gazer import Client` (or AsyncClient); an error answer is
raised as ApiError, no answer (the service down, the connection broken) as NoAnswer, both a GazerError."""

from gazer.classes import UnknownClass
from gazer.client import AsyncClient, Client
from gazer.errors import ApiError, BadAnswer, EmptyName, GazerError, NoAnswer

__all__ = ["ApiError", "AsyncClient", "BadAnswer", "Client", "EmptyName", "GazerError", "NoAnswer", "UnknownClass"]
