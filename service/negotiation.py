"""Content negotiation: which representation an `Accept` header asks for."""

from __future__ import annotations


def media_qualities(accept: str) -> dict[str, float]:
    """Media type -> q value (1 when not given, 0 when unreadable)."""
    qualities = {}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        qualities[media.lower()] = quality
    return qualities


def prefers_png(accept: str) -> bool:
    """Whether an Accept header asks for image/png (q above 0) at least as much as for JSON."""
    qualities = media_qualities(accept)
    png = qualities.get("image/png", 0.0)
    return png > 0 and png >= qualities.get("application/json", 0.0)
