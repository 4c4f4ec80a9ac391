"""Domain errors, each with a stable problem `code` and the HTTP `status` it answers with,
whether the API raises it or a job record stores it."""

from __future__ import annotations

import errno


class GazerError(Exception):
    """Base class: `code` is the stable problem type, `detail` the human text."""

    code = "gazer-error"
    status = 400

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(GazerError):
    code = "not-found"
    status = 404


class UnknownModel(NotFound):
    code = "unknown-model"


class InvalidRequest(GazerError):
    """A well-formed request whose values cannot be used (422)."""

    code = "invalid-request"
    status = 422


class ExplanationTooLong(InvalidRequest):
    """Stopped at its time limit: an explanation of this model this long needs to ask for less."""

    code = "explain-time-limit"


class UnknownMethod(InvalidRequest):
    code = "unknown-method"


class UnknownLayer(InvalidRequest):
    code = "unknown-layer"


class TargetOutOfRange(InvalidRequest):
    code = "target-out-of-range"


class UnsupportedMethod(InvalidRequest):
    code = "unsupported-method"


class NonFiniteScores(InvalidRequest):
    """The model scored an input NaN or infinite, so no probability follows from it."""

    code = "non-finite-scores"


class ModelFailed(InvalidRequest):
    """An operator of the model's graph refused the values it computed from an input (an index
    out of range, an integer division by zero): the upload's check, on random inputs, did not meet
    them. `why` as for NonFiniteScores."""

    code = "model-failed"


class Conflict(GazerError):
    """The request clashes with what exists (a built-in model's name, say)."""

    code = "conflict"
    status = 409


class InvalidImage(GazerError):
    code = "invalid-image"
    status = 422


class ServiceBusy(GazerError):
    """Too much work queued already; the client may retry later (503)."""

    code = "busy"
    status = 503


class TooManyJobs(GazerError):
    """The client has as many jobs queued or running as it may; it may submit again once one ends."""

    code = "too-many-jobs"
    status = 429


class ImageTooLarge(GazerError):
    code = "image-too-large"
    status = 413


class PayloadTooLarge(GazerError):
    code = "payload-too-large"
    status = 413


class TooManyFiles(GazerError):
    code = "too-many-files"
    status = 413


class ResultTooLarge(GazerError):
    """A job's result is more than its record in the job store may hold: the job fails with this
    rather than fill the store that every client's jobs share."""

    code = "result-too-large"
    status = 422


class ModelNotReady(GazerError):
    code = "model-not-ready"
    status = 503


class StorageFailed(GazerError):
    """The data folder ran out of room during a write (a full disk, a quota): nothing was kept."""

    code = "storage-failed"
    status = 507


class StorageUnwritable(GazerError):
    """The data folder refused a write for a reason more room would not fix (permissions, a
    read-only mount, an I/O error): the operator's to fix, so a 500, and nothing was kept."""

    code = "storage-unwritable"
    status = 500


def storage_failure(what: str, error: OSError) -> GazerError:
    """The error for a write to the data folder that raised `error`, `what` saying what was lost."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFailed(f"{what}: the data folder is full: {error.strerror or error}")
    return StorageUnwritable(f"{what}: {error.strerror or error}")


class StorageFull(GazerError):
    """The data folder's free space is under its floor (GAZER_MIN_FREE_DISK_BYTES): nothing new
    is taken in, so that what runs (Redis's saves, jobs' results) still has room."""

    code = "storage-full"
    status = 507
