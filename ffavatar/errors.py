"""One error hierarchy for the whole product.

Every error carries a stable ``code`` string; the backend protocol sends these codes on the wire
(``{"event": "error", "code": ..., "message": ...}``), so clients can react without parsing text.
"""

from __future__ import annotations

import errno


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


class StorageError(FFAvatarError):
    """A file could not be written or read for a reason of the storage, not of its content: the
    disk or quota is full, a file is too large for the file system, a folder is not writable."""

    code = "storage"


_STORAGE_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EIO", "EMFILE", "ENFILE")
                            if hasattr(errno, n))


def from_os_error(e: OSError, what: str, *, writing: bool = True) -> FFAvatarError:
    """An OSError while reading or writing ``what`` (words naming the user's file, e.g. "the output
    file frames/x.png") as a product error: :class:`StorageError` when the storage failed (disk or
    quota full, file too large, read-only, I/O error), else :class:`InvalidInput` (no such file, a
    directory or device where a file was expected, a name too long, no permission)."""
    reason = e.strerror or str(e)
    if e.errno in _STORAGE_ERRNOS:
        return StorageError(f"cannot {'write' if writing else 'read'} {what}: {reason}",
                            hint="free some space or choose another place" if writing else None)
    return InvalidInput(f"cannot use {what}: {reason}")


ALL_ERRORS: tuple[type[FFAvatarError], ...] = (
    FFAvatarError, InvalidInput, FlameFileError, UnsafePickle, HeadModelMismatch, CheckpointError,
    ImageDecodeError, NoFaceFound, NotFound, LimitExceeded, Busy, Cancelled, ProtocolError, StorageError,
)
"""Every error class; their ``code`` values are the protocol's error codes."""
