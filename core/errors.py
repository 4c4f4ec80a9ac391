"""Domain errors. The service maps each class to an HTTP status in one place."""

from __future__ import annotations


class GazerError(Exception):
    """Base class: `code` is the stable problem type, `detail` the human text."""

    code = "gazer-error"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(GazerError):
    code = "not-found"


class UnknownModel(NotFound):
    code = "unknown-model"


class InvalidRequest(GazerError):
    """A well-formed request whose values cannot be used (422)."""

    code = "invalid-request"


class UnknownMethod(InvalidRequest):
    code = "unknown-method"


class UnknownLayer(InvalidRequest):
    code = "unknown-layer"


class TargetOutOfRange(InvalidRequest):
    code = "target-out-of-range"


class UnsupportedMethod(InvalidRequest):
    code = "unsupported-method"


class InvalidImage(GazerError):
    code = "invalid-image"


class ServiceBusy(GazerError):
    """Too much work queued already; the client may retry later (503)."""

    code = "busy"


class ImageTooLarge(GazerError):
    code = "image-too-large"


class PayloadTooLarge(GazerError):
    code = "payload-too-large"


class TooManyFiles(GazerError):
    code = "too-many-files"


class ModelNotReady(GazerError):
    code = "model-not-ready"
