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


def preferred_image(accept: str, media_types: dict[str, str]) -> str | None:
    """The key of `media_types` (format -> media type) that an Accept header asks for most, if
    it asks for one (q above 0) at least as much as for JSON; ties go to the first listed."""
    qualities = media_qualities(accept)
    json_quality = qualities.get("application/json", 0.0)
    best, best_quality = None, 0.0
    for name, media_type in media_types.items():
        quality = qualities.get(media_type, 0.0)
        if quality > best_quality and quality >= json_quality:
            best, best_quality = name, quality
    return best
