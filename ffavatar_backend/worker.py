"""The worker thread: runs work ops (reconstruct, personalize, animate, export_ply) one at a time.

It never touches the ROUTER socket: events go through the :class:`~ffavatar_backend.outbox.Outbox`.
Each job ends with exactly one final event (``result`` or ``error``); exceptions become error events
with the code of their :mod:`ffavatar.errors` class (``internal`` for anything unexpected).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ffavatar.errors import Cancelled, FFAvatarError, ImageDecodeError, LimitExceeded
from ffavatar.images import check_image_size, decode_image, encode_image, private_video_file, read_frames, video_fps

from . import protocol as P
from .engine import Engine, EngineHost
from .jobs import Job, JobRegistry
from .outbox import Outbox
from .store import AvatarStore

log = logging.getLogger(__name__)


def plain(value: Any) -> Any:
    """numpy scalars/arrays and tuples → msgpack-friendly floats, ints and lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def encode_frame(image: np.ndarray, alpha: np.ndarray | None, fmt: str, quality: int) -> tuple[bytes, int]:
    """RGB uint8 (H,W,3) [+ alpha (H,W)] → (bytes, channels) as PNG, JPEG or raw row-major RGB(A)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if alpha is not None:
        rgba = np.concatenate([image, np.asarray(alpha, np.uint8)[..., None]], axis=-1)
        if fmt == "raw":
            return rgba.tobytes(), 4
        ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise FFAvatarError("PNG encoding failed")
        return buf.tobytes(), 4
    if fmt == "raw":
        return image.tobytes(), 3
    return encode_image(image, fmt, quality), 3


class Worker(threading.Thread):
    """Takes jobs from the registry and runs them on the engine."""

    def __init__(self, registry: JobRegistry, outbox: Outbox, host: EngineHost, store: AvatarStore,
                 limits: P.Limits, *, slow_client_timeout: float = 30.0, cache_size: int = 4):
        super().__init__(name="worker", daemon=True)
        self.registry, self.outbox, self.host, self.store, self.limits = registry, outbox, host, store, limits
        self.slow_client_timeout = slow_client_timeout
        self._cache: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._cache_size = cache_size
        self._handlers = {P.OP_RECONSTRUCT: self._reconstruct, P.OP_PERSONALIZE: self._personalize,
                          P.OP_ANIMATE: self._animate, P.OP_EXPORT_PLY: self._export_ply}

    # ------------------------------------------------------------------------ loop
    def run(self) -> None:
        while True:
            job = self.registry.take()
            if job is None:
                return
            self._run(job)

    def _run(self, job: Job) -> None:
        t0 = time.perf_counter()
        log.info("job %s: %s started", job.id, job.op)
        try:
            self._handlers[job.op](job)
            log.info("job %s: %s done in %.2f s", job.id, job.op, time.perf_counter() - t0)
        except Cancelled as e:
            log.info("job %s: cancelled", job.id)
            self.fail(job, P.E_CANCELLED, str(e) or f"job {job.id} was cancelled")
        except FFAvatarError as e:
            log.info("job %s: %s failed: %s", job.id, job.op, e)
            self.fail(job, e.code, str(e))
        except Exception as e:  # noqa: BLE001 - one bad job must not stop the worker
            log.exception("job %s: %s crashed", job.id, job.op)
            self.fail(job, P.E_INTERNAL, f"internal error in {job.op}: {type(e).__name__}: {e}")

    # ------------------------------------------------------------------------ events
    def emit(self, job: Job, event: str, *, droppable: bool = False, **fields: Any) -> None:
        self.outbox.put(job.peer, P.encode(P.make_event(job.id, event, **fields)), droppable=droppable)

    def emit_live(self, job: Job, event: str, **fields: Any) -> None:
        """Queue a frame or track unless the job was cancelled (then raise Cancelled): atomic with the
        cancel, so no frame follows the reply to a ``cancel``."""
        data = P.encode(P.make_event(job.id, event, **fields))
        job.unless_cancelled(lambda: self.outbox.put(job.peer, data))

    def finish(self, job: Job, **fields: Any) -> None:
        data = P.encode(P.make_event(job.id, P.EV_RESULT, **fields))
        self.registry.finish(job, lambda: self.outbox.put(job.peer, data))

    def fail(self, job: Job, code: str, message: str) -> None:
        data = P.encode(P.make_error(job.id, code, message))
        self.registry.finish(job, lambda: self.outbox.put(job.peer, data))

    def progress_callback(self, job: Job, lo: float = 0.0, hi: float = 1.0):
        """A ``progress(fraction, message)`` for the engine: scaled into [lo, hi], at most ~20 events/s."""
        last = [0.0]

        def progress(fraction: float, message: str = "") -> None:
            job.check_cancel()
            f = lo + (hi - lo) * min(max(float(fraction), 0.0), 1.0)
            now = time.monotonic()
            if now - last[0] >= 0.05 or fraction >= 1.0:
                last[0] = now
                job.fraction = f
                self.emit(job, P.EV_PROGRESS, droppable=True, fraction=round(f, 4), message=str(message)[:200])
        return progress

    def wait_for_client(self, job: Job) -> None:
        """Back-pressure: wait while the client has too many unread events; fail a client that stopped reading."""
        if self.outbox.wait_for_room(job.peer, self.slow_client_timeout, job.cancelled):
            return
        job.check_cancel()
        raise LimitExceeded(f"the client read no events for {self.slow_client_timeout:.0f} s while "
                            f"{self.outbox.backlog(job.peer) >> 20} MiB waited for it; the job was stopped",
                            hint="read events as they arrive, or ask for smaller frames")

    # ------------------------------------------------------------------------ helpers
    def engine(self, job: Job) -> Engine:
        while True:
            job.check_cancel()
            try:
                return self.host.get(timeout=0.25)
            except FFAvatarError as e:
                if e.code != P.E_BUSY:
                    raise

    def decode_images(self, job: Job, blobs: list[bytes]) -> list[np.ndarray]:
        """Portraits → RGB arrays. Every header is read first: one image over ``max_pixels``, or all
        of them together over ``max_request_pixels``, fail the job before anything is decoded."""
        total = 0
        for i, data in enumerate(blobs):
            try:
                _, w, h = check_image_size(data, self.limits.max_pixels)
            except FFAvatarError as e:
                raise type(e)(f"image {i}: {e}") from None
            total += w * h
        if total > self.limits.max_request_pixels:
            raise LimitExceeded(f"the {len(blobs)} images have {total:,} pixels together; one request may have "
                                f"at most {self.limits.max_request_pixels:,}", hint="send smaller or fewer portraits")
        out = []
        for i, data in enumerate(blobs):
            job.check_cancel()
            try:
                out.append(decode_image(data, max_pixels=self.limits.max_pixels))
            except FFAvatarError as e:
                raise type(e)(f"image {i}: {e}") from None
        return out

    def load_avatar(self, engine: Engine, avatar_id: str) -> Any:
        version = self.store.version(avatar_id)
        hit = self._cache.get(avatar_id)
        if hit is not None and hit[0] == version:
            self._cache.move_to_end(avatar_id)
            return hit[1]
        avatar = engine.load(self.store.path(avatar_id))
        self._remember(avatar_id, version, avatar)
        return avatar

    def _remember(self, avatar_id: str, version: float, avatar: Any) -> None:
        self._cache[avatar_id] = (version, avatar)
        self._cache.move_to_end(avatar_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    # ------------------------------------------------------------------------ ops
    def _reconstruct(self, job: Job) -> None:
        f = job.fields
        images = self.decode_images(job, f["images"])
        engine = self.engine(job)
        steps = f["personalize_steps"]
        split = 0.3 if steps else 1.0
        avatar = engine.reconstruct(images, crop=f["crop"], progress=self.progress_callback(job, 0.0, split),
                                    cancel=job.cancelled)
        personalized = None
        if steps:
            personalized = plain(engine.personalize(avatar, images, steps=steps, crop=f["crop"],
                                                    progress=self.progress_callback(job, split, 1.0),
                                                    cancel=job.cancelled))
        job.check_cancel()  # last point of no return: after this the avatar is stored
        entry = self.store.create(lambda p: engine.save(avatar, p), name=f["name"], head_model_id=engine.head_model_id,
                                  images=len(images), personalized=personalized)
        self._remember(entry["id"], entry["updated"], avatar)
        self.finish(job, avatar=entry["id"], name=entry["name"], head_model_id=engine.head_model_id,
                    personalize=personalized)

    def _personalize(self, job: Job) -> None:
        f = job.fields
        avatar_id = f["avatar"]
        self.store.get(avatar_id)
        images = self.decode_images(job, f["images"])
        engine = self.engine(job)
        avatar = self.load_avatar(engine, avatar_id)
        self._cache.pop(avatar_id, None)  # personalize changes it in place: never cache a half-done one
        res = plain(engine.personalize(avatar, images, steps=f["steps"], crop=f["crop"],
                                       progress=self.progress_callback(job),
                                       cancel=job.cancelled))
        job.check_cancel()
        entry = self.store.replace(avatar_id, lambda p: engine.save(avatar, p), personalized=res)
        self._remember(avatar_id, entry["updated"], avatar)
        self.finish(job, avatar=avatar_id, **res)

    def _driver_frames(self, job: Job, fps_out: list[float]) -> Iterator[np.ndarray]:
        """Decoded driver frames from ``video`` bytes, a ``frames`` list, or the streamed feed."""
        f = job.fields
        max_frames = self.limits.max_frames
        if f["video"] is not None:
            # errors name the user's clip (video_name), never the private copy the decoder reads
            label = repr(f["video_name"]) if f["video_name"] else "sent as bytes"
            with private_video_file(f["video"], label) as path:
                fps_out[0] = f["fps"] or video_fps(path)
                n = min(max_frames, f["count"]) if f["count"] else max_frames
                for i, frame in enumerate(read_frames(path, max_frames=n + 1 if n == max_frames else n,
                                                      first=f["first"], name=label,
                                                      max_pixels=self.limits.max_pixels)):
                    if i >= max_frames:
                        raise LimitExceeded(f"the driver video {label} has more than {max_frames} frames")
                    yield frame
            return
        blobs = f["frames"] if f["frames"] is not None else job.feed.iterate(job.cancel_event)
        end = f["first"] + f["count"] if f["count"] else None
        for i, data in enumerate(blobs):
            if i < f["first"]:
                continue
            if end is not None and i >= end:
                break
            try:
                yield decode_image(data, max_pixels=self.limits.max_pixels)
            except FFAvatarError as e:
                raise type(e)(f"driver frame {i}: {e}") from None

    def _animate(self, job: Job) -> None:
        f = job.fields
        self.store.get(f["avatar"])
        engine = self.engine(job)
        avatar = self.load_avatar(engine, f["avatar"])
        fps_out = [float(f["fps"] or 25.0)]
        frames = self._driver_frames(job, fps_out)
        batch: list[dict] = []
        start = 0
        count = 0

        def flush_track() -> None:
            nonlocal batch, start
            if batch:
                columns = {k: [p.get(k) for p in batch] for k in batch[0]}
                self.emit_live(job, P.EV_TRACK, start=start, count=len(batch), fps=fps_out[0], params=columns)
                start += len(batch)
                batch = []

        try:
            for fr in engine.animate(avatar, frames, size=f["size"], cameras=f["cameras"], crop=f["crop"],
                                     cancel=job.cancelled):
                job.check_cancel()
                self.wait_for_client(job)
                params = plain(fr.params)
                data, channels = encode_frame(fr.image, fr.alpha if f["alpha"] else None, f["format"], f["quality"])
                h, w = fr.image.shape[:2]
                self.emit_live(job, P.EV_FRAME, index=int(fr.index), format=f["format"], width=w, height=h,
                          channels=channels, image=data, params=params)
                batch.append(params)
                count += 1
                if len(batch) >= f["track_batch"]:
                    flush_track()
        finally:
            frames.close()
        flush_track()
        if count == 0:
            raise ImageDecodeError("the driver clip has no frames")
        self.finish(job, frames=count, fps=fps_out[0])

    def _export_ply(self, job: Job) -> None:
        avatar_id = job.fields["avatar"]
        self.store.get(avatar_id)
        engine = self.engine(job)
        avatar = self.load_avatar(engine, avatar_id)
        with tempfile.TemporaryDirectory(prefix="ffavatar-ply-") as tmp:
            path = Path(tmp) / f"{avatar_id}.ply"
            engine.export_ply(avatar, path)
            data = path.read_bytes()
        if len(data) > self.limits.max_message_bytes:
            raise LimitExceeded(f"the PLY is {len(data)} bytes, over the message limit")
        self.finish(job, avatar=avatar_id, ply=data, bytes=len(data))

