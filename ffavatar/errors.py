"""One error hierarchy for the whole product.

Every error carries a stable ``code`` string; the backend protocol sends these codes on the wire
(``{"event": "error", "code": ..., "message": ...}``), so clients can react without parsing text.
"""

from __future__ import annotations


class FFAvatarError(Exception):
    """Base class. ``code`` is the wire code; ``hint`` tells the user what to do about it."""

    code = "internal"

    def __init__(self, message: str, *, hint: str | None = None):
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class InvalidInput(FFAvatarError):
    """A value from the user or a client has the wrong type, size or range."""

    code = "invalid_input"


class FlameFileError(FFAvatarError):
    """A FLAME model file is missing, unreadable, or lacks the arrays FLAME needs."""

    code = "flame_file"


class UnsafePickle(FlameFileError):
    """A pickle asked for a class the restricted loader does not allow (it was not executed)."""

    code = "unsafe_pickle"


class HeadModelMismatch(FFAvatarError):
    """A checkpoint or avatar was built on another head model than the one loaded."""

    code = "head_model_mismatch"


class CheckpointError(FFAvatarError):
    """A checkpoint or avatar file is missing, truncated or of an unknown format."""

    code = "checkpoint"


class ImageDecodeError(InvalidInput):
    """Bytes or a file could not be decoded as an image or video."""

    code = "image_decode"


class NoFaceFound(InvalidInput):
    """Face detection found no face in a portrait or driver frame."""

    code = "no_face"


class NotFound(FFAvatarError):
    """An avatar, job or file named by id does not exist."""

    code = "not_found"


class LimitExceeded(InvalidInput):
    """A request is larger than the configured limits (images, pixels, bytes, frames)."""

    code = "limit"


class Busy(FFAvatarError):
    """The work queue is full; try again later."""

    code = "busy"


class Cancelled(FFAvatarError):
    """A job was cancelled by its client."""

    code = "cancelled"


class ProtocolError(InvalidInput):
    """A message is not a valid protocol message (unparseable, wrong version, unknown op)."""

    code = "protocol"


ALL_ERRORS: tuple[type[FFAvatarError], ...] = (
    FFAvatarError, InvalidInput, FlameFileError, UnsafePickle, HeadModelMismatch, CheckpointError,
    ImageDecodeError, NoFaceFound, NotFound, LimitExceeded, Busy, Cancelled, ProtocolError,
)
"""Every error class; their ``code`` values are the protocol's error codes."""
