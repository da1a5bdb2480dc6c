"""Client for the FFAvatar backend. PURE: standard library + pyzmq + msgpack only (ships in Blender).

Two ways to use it:

* blocking, for scripts and batch runs: ``hello()``, ``ping()``, ``reconstruct(...)``,
  ``animate(...)`` (an iterator of events), ``get_rig()``, ... Error events raise
  :class:`BackendError` (``.code`` is a protocol error code).
* non-blocking, for Blender timers: ``submit(op, **fields) -> request id`` then ``poll(timeout=0)``
  returns the events that arrived (dicts), never blocking longer than ``timeout``.

``connect()`` alone proves nothing with ZeroMQ: a dead server is detected by a ``ping`` that gets no
answer in time. After that the client reconnects with a fresh DEALER socket on its next request,
and requests that were in flight on the old socket come back from ``poll`` as ``disconnected`` errors.

A server restarted on the same address (killed, then started again before the client noticed) is
detected by its ``instance`` id, which every immediate reply carries: requests the old process had
acknowledged, and requests sent before the reply that revealed the new process but never
acknowledged, end with ``disconnected`` ("the backend restarted"). A ``cancel`` that the server
answers with ``cancelled: false`` while the job is still in flight here also ends the job here
(the server answers a job's final event before such a reply, so the job is unknown to it).
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from . import protocol as P

EventCallback = Callable[[dict], None]


class BackendError(Exception):
    """An error event from the server (``code`` from protocol.ERROR_CODES) or a client-side failure
    (``timeout``, ``disconnected``)."""

    def __init__(self, code: str, message: str, request_id: str | None = None):
        self.code, self.message, self.request_id = code, message, request_id
        super().__init__(f"[{code}] {message}")


class BackendTimeout(BackendError):
    def __init__(self, message: str, request_id: str | None = None):
        super().__init__(P.E_TIMEOUT, message, request_id)


class ConnectionLost(BackendError):
    def __init__(self, message: str, request_id: str | None = None):
        super().__init__(P.E_DISCONNECTED, message, request_id)


@dataclass
class CurveKeys:
    """CurveZMQ keys of a client: the server's public key and this client's key pair (Z85 bytes)."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_files(cls, server_public_file: str | os.PathLike, client_secret_file: str | os.PathLike) -> CurveKeys:
        import zmq.auth

        server_public, _ = zmq.auth.load_certificate(os.fspath(server_public_file))
        public, secret = zmq.auth.load_certificate(os.fspath(client_secret_file))
        if not secret:
            raise ValueError(f"{client_secret_file} holds no secret key (use the .key_secret file)")
        return cls(server_public, public, secret)


def _blob(x: Any) -> bytes:
    """bytes-like → bytes; a path → the file's bytes."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    if isinstance(x, (str, os.PathLike)):
        return Path(x).read_bytes()
    raise TypeError(f"expected encoded image/video bytes or a file path, got {type(x).__name__}")


def as_numpy(packed: dict) -> Any:
    """A packed array from ``get_rig`` → numpy array (needs numpy, which Blender ships)."""
    import numpy as np  # local: this module itself needs only the standard library

    return np.frombuffer(packed["data"], dtype=np.dtype(packed["dtype"])).reshape(packed["shape"])


class Client:
    """A connection to one backend.

    ``timeout``: seconds without any message before a blocking call checks the server with a ping
    (a job that still runs keeps the call waiting; a dead server raises :class:`ConnectionLost`).
    ``curve``: :class:`CurveKeys` when the server requires CurveZMQ.
    """

    def __init__(self, address: str = "tcp://127.0.0.1:5557", *, timeout: float = 30.0, ping_timeout: float = 5.0,
                 curve: CurveKeys | None = None, context: zmq.Context | None = None,
                 client_name: str = "ffavatar-client"):
        self.address, self.timeout, self.ping_timeout, self.curve = address, timeout, ping_timeout, curve
        self.client_name = client_name
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._backlog: deque[dict] = deque()  # events nobody waits for: returned by poll()
        self._queues: dict[str, deque[dict]] = {}  # events of requests a blocking call waits for
        self._alias: dict[str, str] = {}  # chunk request id → the job whose waiter gets its errors
        self._inflight: dict[str, str] = {}  # request id → op, until its final event
        self._sent: dict[str, int] = {}  # request id → send sequence number (while in flight)
        self._acked: dict[str, str] = {}  # request id → instance of the server that acknowledged it
        self._cancels: dict[str, str] = {}  # cancel request id → the job it cancels
        self._seq = itertools.count()
        self.instance: str | None = None  # the server process last heard from (protocol INSTANCE)
        self._counter = itertools.count()
        self._prefix = secrets.token_hex(4)
        self.server_info: dict | None = None
        self.last_heard = 0.0
        self.connect()

    # ------------------------------------------------------------------------ connection
    def connect(self) -> None:
        """Open a fresh DEALER socket (linger 0) to ``address``."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, -1)
        # A bounded receive queue: a caller that stops reading pushes back on the server (which then
        # pauses or fails the job) instead of growing this process's memory. DEALER never drops here.
        sock.setsockopt(zmq.RCVHWM, 64)
        if self.curve is not None:
            sock.curve_serverkey = self.curve.server_public
            sock.curve_publickey = self.curve.public
            sock.curve_secretkey = self.curve.secret
        sock.connect(self.address)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def reconnect(self) -> None:
        """New socket; requests in flight on the old one are reported as ``disconnected`` errors."""
        self.close()
        for rid, op in list(self._inflight.items()):
            ev = P.make_error(rid, P.E_DISCONNECTED, f"connection to {self.address} was reset while {op} ran")
            self._route(ev)
        self._inflight.clear()
        self._sent.clear()
        self._acked.clear()
        self._cancels.clear()
        self.connect()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------ non-blocking API
    def new_id(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"

    def submit(self, op: str, *, request_id: str | None = None, **fields: Any) -> str:
        """Send one request (fields left None are omitted) and return its id at once."""
        if self._sock is None:
            self.connect()
        rid = request_id or self.new_id()
        data = P.encode(P.make_request(op, rid, **{k: v for k, v in fields.items() if v is not None}))
        limit = (self.server_info or {}).get("limits", {}).get("max_message_bytes")
        if limit and len(data) > limit:
            raise BackendError(P.E_LIMIT, f"the {op} request is {len(data)} bytes; the server accepts at most {limit}",
                               rid)
        try:
            self._sock.send(data, zmq.NOBLOCK, copy=len(data) < 65536)
        except zmq.Again:
            raise ConnectionLost(f"cannot send to {self.address}: the server does not take messages "
                                 "(not running, or not reading)", rid) from None
        if op != P.OP_ANIMATE_CHUNK:
            self._inflight[rid] = op
            self._sent[rid] = next(self._seq)
            if op == P.OP_CANCEL:
                self._cancels[rid] = fields["job"]
        return rid

    def poll(self, timeout: float = 0.0, max_events: int = 256) -> list[dict]:
        """Events that arrived (for requests no blocking call waits on): waits at most ``timeout`` s
        for the first one, then takes what is already there, at most ``max_events`` (so a Blender
        timer callback stays short even while frames pour in)."""
        if not self._backlog:
            self._pump(timeout)
        while len(self._backlog) < max_events and self._pump(0.0):
            pass
        out = [self._backlog.popleft() for _ in range(min(max_events, len(self._backlog)))]
        return out

    def send_chunk(self, job: str, frames: Sequence[Any], last: bool = False) -> str:
        """Stream driver frames (encoded bytes or paths) into a running ``animate`` job started with stream=True."""
        return self.submit(P.OP_ANIMATE_CHUNK, job=job, frames=[_blob(f) for f in frames], last=last)

    def pending(self) -> list[str]:
        """Ids of requests sent and not yet finished."""
        return list(self._inflight)

    # ------------------------------------------------------------------------ receiving
    def _route(self, ev: dict) -> None:
        rid = ev.get("id")
        instance = ev.get(P.INSTANCE)
        if isinstance(rid, str) and rid in self._inflight and isinstance(instance, str):
            self._heard_from(rid, instance)
        target = self._alias.get(rid, rid) if isinstance(rid, str) else None
        if ev.get("event") == P.EV_RESULT and isinstance(rid, str) and self._inflight.get(rid) == P.OP_HELLO:
            self.server_info = ev  # whoever sent the hello (hello() or submit): its limits apply from now on
        if ev.get("event") in P.FINAL_EVENTS and isinstance(rid, str):
            self._inflight.pop(rid, None)
            self._sent.pop(rid, None)
            self._acked.pop(rid, None)
        if target in self._queues:
            self._queues[target].append(ev)
        else:
            self._backlog.append(ev)
        job = self._cancels.pop(rid, None) if isinstance(rid, str) and ev.get("event") in P.FINAL_EVENTS else None
        if job is not None and ev.get("event") == P.EV_RESULT and ev.get("cancelled") is False and job in self._inflight:
            self._route(P.make_error(job, P.E_CANCELLED, f"cancelled here: the backend at {self.address} does not "
                                                         f"know job {job} ({ev.get('reason', 'no such job')})"))

    def _heard_from(self, rid: str, instance: str) -> None:
        """The server process ``instance`` answered request ``rid`` (at once: an acknowledgement).
        When that is a new process, the requests the old one took, and those sent before ``rid`` that
        nobody acknowledged, are lost: they end with ``disconnected``."""
        self._acked[rid] = instance
        old, self.instance = self.instance, instance
        if old == instance:
            return
        seq = self._sent.get(rid, -1)
        lost = [r for r in self._inflight if r != rid and (
            (r in self._acked and self._acked[r] != instance) or (r not in self._acked and self._sent.get(r, 0) < seq))]
        for r in lost:
            why = (f"the backend at {self.address} restarted (server instance {old} is now {instance}); "
                   f"the {self._inflight[r]} request {r} was lost with the old process") if old else (
                   f"the backend at {self.address} never acknowledged the {self._inflight[r]} request {r} "
                   "(it restarted, or the request was lost)")
            self._route(P.make_error(r, P.E_DISCONNECTED, why))

    def _pump(self, timeout: float) -> bool:
        """Receive at most one message (waiting up to ``timeout`` s) and route it; False if none came."""
        if self._sock is None:
            return False
        if not self._sock.poll(int(max(timeout, 0.0) * 1000), zmq.POLLIN):
            return False
        data = self._sock.recv(copy=True)
        self.last_heard = time.monotonic()
        try:
            ev = P.decode(data)
        except P.WireError as e:
            ev = P.make_error(None, P.E_PROTOCOL, f"undecodable message from the server: {e.message}")
        self._route(ev)
        return True

    def _wait_one(self, rid: str, timeout: float) -> dict | None:
        q = self._queues[rid]
        deadline = time.monotonic() + timeout
        while not q:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._pump(left)
        return q.popleft()

    def _check_alive(self, rid: str) -> None:
        """After silence: ping; raise ConnectionLost (and reset the socket) if the server does not answer."""
        try:
            self.ping(timeout=self.ping_timeout)
        except BackendTimeout:
            raise ConnectionLost(f"the server at {self.address} stopped answering", rid) from None

    def events(self, rid: str, *, timeout: float | None = None, raise_errors: bool = True,
               keep_waiting: bool = True) -> Iterator[dict]:
        """Events of request ``rid`` until its final one (yielded too). Error events raise
        :class:`BackendError` when ``raise_errors``. After ``timeout`` s of silence the server is
        pinged: alive → keep waiting when ``keep_waiting`` (a job may take long), else BackendTimeout."""
        timeout = self.timeout if timeout is None else timeout
        self._queues.setdefault(rid, deque())
        # events that arrived before anyone waited
        for ev in [e for e in self._backlog if self._alias.get(e.get("id"), e.get("id")) == rid]:
            self._backlog.remove(ev)
            self._queues[rid].append(ev)
        try:
            while True:
                ev = self._wait_one(rid, timeout)
                if ev is None:
                    if not keep_waiting:
                        self.reconnect()  # drop what the dead/stuck socket still queues
                        raise BackendTimeout(f"no answer from {self.address} within {timeout:g} s", rid)
                    self._check_alive(rid)
                    continue
                if ev.get("event") == P.EV_ERROR and raise_errors:
                    raise BackendError(str(ev.get("code")), str(ev.get("message")), ev.get("id"))
                yield ev
                if ev.get("event") in P.FINAL_EVENTS and ev.get("id") == rid:
                    return
        finally:
            self._queues.pop(rid, None)
            for alias in [a for a, r in self._alias.items() if r == rid]:
                del self._alias[alias]

    def request(self, op: str, *, on_event: EventCallback | None = None, timeout: float | None = None,
                **fields: Any) -> dict:
        """Send a request and block until its ``result`` (returned); ``on_event`` sees every other event."""
        rid = self.submit(op, **fields)
        control = op in P.CONTROL_OPS
        for ev in self.events(rid, timeout=timeout, keep_waiting=not control):
            if ev.get("event") == P.EV_RESULT:
                return ev
            if on_event is not None:
                on_event(ev)
        raise ConnectionLost(f"{op} ended without a result", rid)  # pragma: no cover - events() always ends in one

    # ------------------------------------------------------------------------ control ops
    def ping(self, timeout: float | None = None) -> float:
        """Round-trip time in seconds; :class:`BackendTimeout` if the server does not answer in ``timeout``."""
        t0 = time.perf_counter()
        rid = self.submit(P.OP_PING)
        for ev in self.events(rid, timeout=self.ping_timeout if timeout is None else timeout, keep_waiting=False):
            if ev.get("event") == P.EV_RESULT:
                return time.perf_counter() - t0
        raise BackendTimeout("no pong", rid)  # pragma: no cover

    def is_alive(self, timeout: float = 2.0) -> bool:
        try:
            self.ping(timeout)
            return True
        except BackendTimeout:
            return False

    def hello(self, timeout: float | None = None) -> dict:
        """Negotiate the protocol version; returns server version, model, device and limits
        (also kept in ``server_info``, so requests over the size limit fail here, not on the wire)."""
        return self.request(P.OP_HELLO, versions=list(P.SUPPORTED_VERSIONS), client=self.client_name, timeout=timeout)

    def status(self) -> dict:
        return self.request(P.OP_STATUS)

    def wait_ready(self, timeout: float = 120.0) -> dict:
        """Block until the server's model is loaded (status ``engine`` = ready); raises if it failed."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            st = self.status()
            if st.get("engine") == "ready":
                return st
            if st.get("engine") == "failed":
                raise BackendError(P.E_INTERNAL, f"the server's model failed to load: {st.get('engine_error')}")
            if time.monotonic() > deadline:
                raise BackendTimeout(f"the model was not ready within {timeout:g} s")
            self._pump(delay)  # wait, but keep routing whatever arrives
            delay = min(delay * 2, 0.5)

    def cancel(self, job: str) -> bool:
        """Ask the server to stop job ``job``; True if it was running or queued (it then ends with ``cancelled``)."""
        return bool(self.request(P.OP_CANCEL, job=job).get("cancelled"))

    def list_avatars(self) -> list[dict]:
        return list(self.request(P.OP_LIST_AVATARS)["avatars"])

    def delete_avatar(self, avatar: str) -> None:
        self.request(P.OP_DELETE_AVATAR, avatar=avatar)

    def get_rig(self, n_expr: int | None = None) -> dict:
        """The FLAME rig: arrays as ``{"dtype", "shape", "data"}`` (see :func:`as_numpy`), names as lists."""
        return self.request(P.OP_GET_RIG, n_expr=n_expr)["rig"]

    # ------------------------------------------------------------------------ work ops
    def reconstruct(self, images: Sequence[Any], *, personalize_steps: int = 0, name: str = "",
                    crop: bool | str = "detect", on_event: EventCallback | None = None) -> dict:
        """Build an avatar from portraits (encoded bytes or paths); result has ``avatar`` (its id)."""
        return self.request(P.OP_RECONSTRUCT, images=[_blob(i) for i in images], personalize_steps=personalize_steps,
                            name=name, crop=crop, on_event=on_event)

    def personalize(self, avatar: str, images: Sequence[Any], *, steps: int = 500, crop: bool | str = "detect",
                    on_event: EventCallback | None = None) -> dict:
        """Fine-tune a stored avatar on its portraits; result has ``psnr_before``/``psnr_after``."""
        return self.request(P.OP_PERSONALIZE, avatar=avatar, images=[_blob(i) for i in images], steps=steps,
                            crop=crop, on_event=on_event)

    def export_ply(self, avatar: str) -> bytes:
        return self.request(P.OP_EXPORT_PLY, avatar=avatar)["ply"]

    def animate(self, avatar: str, *, frames: Iterable[Any] | None = None, video: Any = None,
                stream: bool | None = None,
                size: int = 512, format: str = "jpeg", cameras: dict | list | None = None, alpha: bool = False,
                quality: int | None = None, fps: float | None = None, crop: bool | str = "detect",
                track_batch: int | None = None, chunk_size: int = 8, window: int = 32, first: int = 0,
                count: int = 0, video_name: str | None = None) -> Iterator[dict]:
        """Animate an avatar; yields ``progress``, ``frame`` (in order) and ``track`` events, then the
        ``result``. The driver is ``video`` (bytes or path), or ``frames`` (encoded bytes or paths): a
        list/tuple is sent in one message, any other iterable (or ``stream=True``) is streamed in
        chunks of ``chunk_size`` while at most ``window`` frames are unanswered. Only driver frames
        ``first .. first+count-1`` (count 0: to the end) are tracked and rendered, indexed from 0.
        ``video_name`` (default: a path's file name) is how the server's messages call the video.
        Leaving the loop early cancels the job."""
        opts = dict(avatar=avatar, size=size, format=format, cameras=cameras, alpha=alpha, quality=quality, fps=fps,
                    crop=crop, track_batch=track_batch, first=first or None, count=count or None)
        if video is not None:
            if video_name is None and isinstance(video, (str, os.PathLike)):
                video_name = os.path.basename(os.fspath(video))
            yield from self._run_job(self.submit(P.OP_ANIMATE, video=_blob(video), video_name=video_name, **opts))
            return
        if frames is None:
            raise ValueError("animate needs frames or video")
        if stream is None:
            stream = not isinstance(frames, (list, tuple))
        if not stream:
            yield from self._run_job(self.submit(P.OP_ANIMATE, frames=[_blob(f) for f in frames], **opts))
            return
        yield from self._run_stream(self.submit(P.OP_ANIMATE, stream=True, **opts), iter(frames), chunk_size, window)

    def _run_job(self, rid: str) -> Iterator[dict]:
        finished = False
        try:
            for ev in self.events(rid):
                finished = ev.get("event") in P.FINAL_EVENTS
                yield ev
        finally:
            if not finished and self._sock is not None and rid in self._inflight:
                self._cancel_quietly(rid)

    def _cancel_quietly(self, rid: str) -> None:
        try:
            self.submit(P.OP_CANCEL, job=rid)
        except BackendError:
            pass

    def _run_stream(self, rid: str, frames: Iterator[Any], chunk_size: int, window: int) -> Iterator[dict]:
        self._queues.setdefault(rid, deque())
        sent, answered, last_sent, finished = 0, 0, False, False
        events = self.events(rid)
        try:
            while True:
                while not last_sent and sent - answered < window:
                    chunk = [_blob(f) for f in itertools.islice(frames, chunk_size)]
                    last_sent = len(chunk) < chunk_size
                    cid = self.new_id()
                    self._alias[cid] = rid
                    self.submit(P.OP_ANIMATE_CHUNK, request_id=cid, job=rid, frames=chunk, last=last_sent)
                    sent += len(chunk)
                    if not last_sent and self._queues[rid]:
                        break  # hand over what arrived before reading more input
                ev = next(events)
                if ev.get("event") == P.EV_FRAME:
                    answered = int(ev.get("index", answered)) + 1
                finished = ev.get("event") in P.FINAL_EVENTS
                yield ev
                if finished:
                    return
        finally:
            events.close()
            if not finished and self._sock is not None and rid in self._inflight:
                self._cancel_quietly(rid)
