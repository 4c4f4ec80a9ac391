"""Gazer's HTTP API (FastAPI)."""
