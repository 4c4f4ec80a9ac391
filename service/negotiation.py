"""Content negotiation: which representation an `Accept` header asks for."""

from __future__ import annotations

from fastapi import Request
from fastapi.datastructures import DefaultPlaceholder
from fastapi.routing import APIRoute

from core.errors import GazerError


class NotAcceptable(GazerError):
    code = "not-acceptable"
    status = 406


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
    it asks for one (by name, image/* or */*) more than for JSON; among images, ties go to the
    first listed. A bare */*, or an image asked for as much as JSON (a client generated from the
    OpenAPI schema lists every type), asks for JSON; */* with JSON refused (q=0) asks for an image."""
    qualities = media_qualities(accept)
    json_quality = quality(qualities, "application/json")
    best, best_quality = None, 0.0
    for name, media_type in media_types.items():
        wanted = quality(qualities, media_type)
        if wanted > best_quality and wanted > json_quality:
            best, best_quality = name, wanted
    return best


def accepts_json(accept: str) -> bool:
    """Whether an Accept header allows JSON (no header allows everything)."""
    return not accept.strip() or quality(media_qualities(accept), "application/json") > 0


def quality(qualities: dict[str, float], media_type: str) -> float:
    """The q value of `media_type`'s most specific match (itself, then type/*, then */*); 0 for none."""
    for candidate in (media_type, f"{media_type.split('/')[0]}/*", "*/*"):
        if candidate in qualities:
            return qualities[candidate]
    return 0.0


async def acceptable(request: Request) -> None:
    """406 when an Accept header allows none of what the matched route answers (no header
    allows everything). `async`, though it does not await: FastAPI runs a plain `def`
    dependency in its thread pool, a thread hop per request."""
    accept = request.headers.get("accept", "")
    offered = route_media_types(request.scope["route"])
    qualities = media_qualities(accept)
    if accept.strip() and offered and not any(quality(qualities, media_type) > 0 for media_type in offered):
        raise NotAcceptable(f"this route answers {' or '.join(offered)}; the Accept header ({accept[:200]!r}) "
                            f"allows none of them")


def route_media_types(route: APIRoute) -> list[str]:
    """What a route answers with success, as its OpenAPI says: its response class's media type
    and those listed for 200 (empty for a file of any type, or no content)."""
    if route.status_code == 204:
        return []
    response_class = route.response_class
    if isinstance(response_class, DefaultPlaceholder):
        response_class = response_class.value
    declared = [response_class.media_type] if response_class.media_type else []
    return declared + list(route.responses.get(200, {}).get("content", {}))
