"""The engine: what does the heavy work behind the service, loaded once, in the background.

:class:`Engine` is the small interface the worker uses; :class:`ModelEngine` implements it with the
model (``ffavatar.api``); ``synthetic.SyntheticEngine`` implements it without a model for
benchmarks of the transport and for fast client tests. :class:`EngineHost` loads an engine in a
thread at server start, so ``hello`` and every control op answer at once while the model loads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ffavatar.errors import Busy, FFAvatarError, InvalidInput

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


class Engine(Protocol):
    """What the worker needs. Images are RGB uint8 (H,W,3); ``crop`` is one of protocol.CROP_MODES;
    ``cancel()`` true → raise Cancelled."""

    head_model_id: str
    device: str
    expression_names: list[str]

    def reconstruct(self, images: Sequence[np.ndarray], *, crop: str, progress: Progress | None,
                    cancel: CancelCheck | None) -> Any: ...

    def personalize(self, avatar: Any, images: Sequence[np.ndarray], *, steps: int, crop: str,
                    progress: Progress | None, cancel: CancelCheck | None) -> dict: ...

    def animate(self, avatar: Any, frames: Iterable[np.ndarray], *, size: int, cameras: dict | list | None,
                crop: str, cancel: CancelCheck | None) -> Iterator[Any]:
        """Yields objects with ``index``, ``image`` (H,W,3) u8, ``alpha`` (H,W) u8, ``params`` dict."""

    def rig(self, n_expr: int | None) -> dict: ...

    def save(self, avatar: Any, path: Path) -> None: ...

    def load(self, path: Path) -> Any: ...

    def export_ply(self, avatar: Any, path: Path) -> None: ...


def camera_function(cameras: dict | list | None, convert: Callable[[dict], Any]) -> Callable[[int], Any] | None:
    """Blender camera dict(s) from the client → ``camera(i)``: one dict for all frames, or a list per
    frame (frames past its end keep the last camera), or None (the driver's own predicted camera).
    Every dict is converted up front, so a bad one fails the job before any frame."""
    if cameras is None:
        return None
    if isinstance(cameras, dict):
        cam = convert(cameras)
        return lambda i: cam
    if not cameras:
        raise InvalidInput("'cameras' is an empty list; send null for the driver's own camera")
    cams = [convert(c) for c in cameras]
    return lambda i: cams[min(i, len(cams) - 1)]


class ModelEngine:
    """The real model through ``ffavatar.api`` (CPU or CUDA)."""

    def __init__(self, checkpoint: str | Path | None = None, device: str = "auto", flame: str | Path | None = None):
        from ffavatar.api import Reconstructor

        t0 = time.perf_counter()
        self.reconstructor = Reconstructor.from_checkpoint(path=checkpoint, device=device, flame=flame)
        self.head_model_id = str(self.reconstructor.head_model_id)
        self.device = str(self.reconstructor.device)
        self.expression_names = list(self.reconstructor.expression_names)
        log.info("model loaded in %.1f s on %s (head model %s)", time.perf_counter() - t0, self.device,
                 self.head_model_id)

    def reconstruct(self, images, *, crop, progress, cancel):
        return self.reconstructor.reconstruct(list(images), crop=crop, progress=progress, cancel=cancel)

    def personalize(self, avatar, images, *, steps, crop, progress, cancel):
        return dict(avatar.personalize(list(images), steps=steps, crop=crop, progress=progress, cancel=cancel))

    def animate(self, avatar, frames, *, size, cameras, crop, cancel):
        from ffavatar.render.camera import Camera

        camera = camera_function(cameras, Camera.from_blender)
        return avatar.animate(frames, size=size, camera=camera, crop=crop, cancel=cancel)

    def rig(self, n_expr):
        return self.reconstructor.rig(n_expr)

    def save(self, avatar, path):
        avatar.save(path)

    def load(self, path):
        from ffavatar.api import Avatar

        return Avatar.load(path, self.reconstructor)

    def export_ply(self, avatar, path):
        avatar.to_ply(path)


LOADING, READY, FAILED = "loading", "ready", "failed"


class EngineHost:
    """Loads an engine in a background thread and hands it out once ready."""

    def __init__(self, factory: Callable[[], Engine]):
        self._factory = factory
        self._ready = threading.Event()
        self.engine: Engine | None = None
        self.error: FFAvatarError | None = None
        self.state = LOADING
        self._thread = threading.Thread(target=self._load, name="engine-load", daemon=True)

    def start(self) -> EngineHost:
        self._thread.start()
        return self

    def _load(self) -> None:
        try:
            self.engine = self._factory()
            self.state = READY
        except FFAvatarError as e:
            log.error("the engine failed to load: %s", e)
            self.error, self.state = e, FAILED
        except Exception as e:  # noqa: BLE001 - reported to every client instead of crashing the server
            log.exception("the engine failed to load")
            self.error, self.state = FFAvatarError(f"the model failed to load: {type(e).__name__}: {e}"), FAILED
        finally:
            self._ready.set()

    def get(self, timeout: float | None = None) -> Engine:
        """The engine; waits up to ``timeout`` s (Busy if still loading), raises the load error if it failed."""
        if not self._ready.wait(timeout):
            raise Busy("the model is still loading", hint="retry in a moment; status shows when it is ready")
        if self.engine is None:
            assert self.error is not None
            raise type(self.error)(str(self.error))
        return self.engine

    def info(self) -> dict[str, Any]:
        e = self.engine
        return {"engine": self.state, "engine_error": str(self.error) if self.error else None,
                "head_model_id": e.head_model_id if e else None, "device": e.device if e else None,
                "n_expressions": len(e.expression_names) if e else None}
