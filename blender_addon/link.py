"""The live link to the backend (no bpy): a worker thread owns the ZeroMQ client socket.

The main thread never blocks on the network: it puts commands on a queue (:meth:`Link.submit`,
:meth:`Link.cancel`) and drains events from another (:meth:`Link.events`), from a ``bpy.app.timers``
callback in the UI or directly in tests and batch runs. The worker sends, polls, keeps a heartbeat
(``ping``), declares the backend offline after ``timeout`` seconds without an answer, fails the jobs
that were running with a clear ``disconnected`` error, and reconnects (``hello``) when it answers again.
A backend restarted on the same address is noticed by the bundled client (its ``instance`` changes):
the jobs the old process had end with ``disconnected`` and the link says ``hello`` again. A cancel
the backend does not know ends the job here (``cancelled``). Op, event and error names come from
the bundled protocol module.

Job ids are the link's own (``"j1"``, ``"j2"``...), so events can be matched before the client has
assigned a request id. Every event put on the queue is the protocol's map with ``id`` replaced by
the link's job id.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .backend import protocol as P

log = logging.getLogger(__name__)

OFFLINE, CONNECTING, ONLINE = "offline", "connecting", "online"
E_DISCONNECTED = P.E_DISCONNECTED
RETRY_INTERVAL = 2.0
"""Seconds between reconnection attempts while the backend is offline."""
STREAM_WINDOW = 32
"""Driver frames a streamed animate may have in flight (sent, not yet returned as frame events)."""


def default_client_factory(address: str, timeout: float):
    """The bundled pure client (``backend/client.py``, copied from ffavatar_backend at build time)."""
    from .backend.client import Client

    return Client(address, timeout=timeout)


@dataclass
class _Pending:
    """A job the worker tracks: its request id on the wire and, when streaming, its frame source."""

    job: str
    op: str
    request: str | None = None
    chunks: Iterator[list[bytes]] | None = None
    sent: int = 0
    returned: int = 0
    done_sending: bool = True
    chunk_ids: set[str] = field(default_factory=set)


class Link:
    """``Link(address).start()``; ``submit(op, **fields) -> job id``; ``events() -> [event]``."""

    def __init__(self, address: str, *, timeout: float = 10.0, heartbeat: float = 1.0,
                 client_factory: Callable[[str, float], Any] | None = None, client_name: str = "ffavatar-blender"):
        self.address = address
        self.timeout = float(timeout)
        self.heartbeat = float(heartbeat)
        self.client_factory = client_factory or default_client_factory
        self.client_name = client_name
        self.state = OFFLINE
        self.info: dict[str, Any] = {}
        self.error = ""
        self._commands: queue.Queue = queue.Queue()
        self._events: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state_changed = threading.Condition()

    # ------------------------------------------------------------------ main-thread API
    def start(self) -> Link:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="ffavatar-link", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
        self._set_state(OFFLINE, self.error)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, op: str, *, chunks: Iterator[list[bytes]] | None = None, **fields: Any) -> str:
        """Queue a request; returns the job id its events will carry. ``chunks`` (animate with
        ``stream=True``): an iterator of frame lists sent as ``animate_chunk`` messages, at most
        :data:`STREAM_WINDOW` frames ahead of the returned frames."""
        job = f"j{next(self._ids)}"
        self._commands.put(("submit", job, op, fields, chunks))
        return job

    def cancel(self, job: str) -> None:
        self._commands.put((P.OP_CANCEL, job, None, None, None))

    def events(self, max_events: int | None = None) -> list[dict]:
        """Every event waiting (non-blocking)."""
        out = []
        while max_events is None or len(out) < max_events:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                break
        return out

    def wait_events(self, timeout: float) -> list[dict]:
        """Block up to ``timeout`` s for at least one event, then return all waiting."""
        try:
            first = self._events.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return []
        return [first] + self.events()

    def wait_online(self, timeout: float) -> bool:
        """Block until the backend answered ``hello`` (True) or ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        with self._state_changed:
            while self.state != ONLINE:
                left = deadline - time.monotonic()
                if left <= 0 or not self.running:
                    return self.state == ONLINE
                self._state_changed.wait(min(left, 0.1))
        return True

    # ------------------------------------------------------------------ worker thread
    def _set_state(self, state: str, error: str = "") -> None:
        with self._state_changed:
            changed = state != self.state
            self.state, self.error = state, error
            self._state_changed.notify_all()
        if changed:
            log.info("backend %s: %s%s", self.address, state, f" ({error})" if error else "")
            self._events.put({"v": P.PROTOCOL_VERSION, "id": None, "event": "link", "state": state, "message": error,
                              "info": dict(self.info)})

    def _update_info(self, status: dict) -> None:
        keys = ("engine", "engine_error", "head_model_id", "device", "n_expressions")
        new = {k: status.get(k) for k in keys if k in status}
        if any(self.info.get(k) != v for k, v in new.items()):
            self.info.update(new)
            self._events.put({"v": P.PROTOCOL_VERSION, "id": None, "event": "link", "state": self.state, "message": "",
                              "info": dict(self.info)})

    def _emit(self, job: str, event: str, **fields: Any) -> None:
        self._events.put({"v": P.PROTOCOL_VERSION, "id": job, "event": event, **fields})

    def _run(self) -> None:
        client = None
        pending: dict[str, _Pending] = {}     # job id -> pending
        by_request: dict[str, str] = {}       # wire request id -> job id
        hello_id: str | None = None
        ping_id: str | None = None
        last_answer = time.monotonic()
        last_ping = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if client is None:
                    try:
                        client = self.client_factory(self.address, self.timeout)
                        hello_id = _hello(client, self.client_name)
                        last_answer = last_ping = now
                        if self.state == OFFLINE and not self.error:
                            self._set_state(CONNECTING)
                    except Exception as e:  # noqa: BLE001 - bad address etc.: report and retry
                        client = None
                        self._set_state(OFFLINE, f"cannot open {self.address}: {e}")
                        self._stop.wait(1.0)
                        continue
                # commands from the main thread
                while True:
                    try:
                        kind, job, op, fields, chunks = self._commands.get_nowait()
                    except queue.Empty:
                        break
                    if kind == P.OP_CANCEL:
                        p = pending.get(job)
                        if p is not None and p.request is not None:
                            _send(client, P.OP_CANCEL, job=p.request)
                        continue
                    if self.state != ONLINE:
                        self._emit(job, P.EV_ERROR, code=E_DISCONNECTED,
                                   message=f"the backend at {self.address} is not reachable "
                                           f"({self.error or self.state}); start it from the FFAvatar panel or check the address")
                        continue
                    p = _Pending(job, op, chunks=chunks, done_sending=chunks is None)
                    try:
                        p.request = client.submit(op, **fields)
                    except Exception as e:  # noqa: BLE001 - e.g. a message over the size limit
                        self._emit(job, P.EV_ERROR, code=getattr(e, "code", P.E_INVALID_INPUT),
                                   message=f"could not send {op}: {getattr(e, 'message', e)}")
                        continue
                    pending[job] = p
                    by_request[p.request] = job
                # feed streaming jobs
                for p in pending.values():
                    while not p.done_sending and p.sent - p.returned < STREAM_WINDOW:
                        try:
                            frames = next(p.chunks)
                            last = False
                        except StopIteration:
                            frames, last = [], True
                        except Exception as e:  # noqa: BLE001 - the frame source failed (file read)
                            _send(client, P.OP_CANCEL, job=p.request)
                            self._emit(p.job, P.EV_ERROR, code=P.E_INVALID_INPUT, message=f"reading driver frames: {e}")
                            p.done_sending = True
                            break
                        rid = _send(client, P.OP_ANIMATE_CHUNK, job=p.request, frames=list(frames), last=last)
                        if rid is None:
                            self._emit(p.job, P.EV_ERROR, code=E_DISCONNECTED, message="could not stream driver frames")
                            _send(client, P.OP_CANCEL, job=p.request)
                            p.done_sending = True
                            break
                        by_request[rid] = p.job
                        p.chunk_ids.add(rid)
                        p.sent += len(frames)
                        p.done_sending = last
                # events
                try:
                    events = client.poll(timeout=0.02)
                except Exception as e:  # noqa: BLE001 - a broken message: report, keep the link
                    log.warning("poll failed: %s", e)
                    events = []
                if events:
                    last_answer = time.monotonic()
                for ev in events:
                    rid = ev.get("id")
                    if rid is not None and rid == hello_id:
                        hello_id = None
                        if ev.get("event") == P.EV_RESULT:
                            self.info = {k: v for k, v in ev.items() if k not in ("v", "id", "event")}
                            self._set_state(ONLINE)
                        elif ev.get("event") == P.EV_ERROR:
                            self._set_state(OFFLINE, f"hello refused: {ev.get('message')}")
                        continue
                    if rid is not None and rid == ping_id:
                        ping_id = None
                        if ev.get("event") == P.EV_RESULT and "engine" in ev:  # a status answer
                            self._update_info(ev)
                        known = self.info.get(P.INSTANCE)
                        if known and ev.get(P.INSTANCE) not in (None, known):  # restarted: its jobs already ended
                            hello_id = _hello(client, self.client_name)
                        continue
                    job = by_request.get(rid)
                    if job is None:
                        continue
                    p = pending.get(job)
                    kind = ev.get("event")
                    if p is not None and rid in p.chunk_ids:  # chunk requests are answered only on error
                        if kind == P.EV_ERROR:
                            _send(client, P.OP_CANCEL, job=p.request)
                            self._emit(job, P.EV_ERROR, code=ev.get("code"), message=f"streaming frames: {ev.get('message')}")
                        continue
                    if p is not None and kind == P.EV_FRAME:
                        p.returned += 1
                    self._events.put({**ev, "id": job})
                    if kind in P.FINAL_EVENTS:
                        pending.pop(job, None)
                        by_request.pop(rid, None)
                        if p is not None:
                            for c in p.chunk_ids:
                                by_request.pop(c, None)
                # heartbeat / liveness
                now = time.monotonic()
                silent = now - last_answer
                # while offline, retry with a fresh socket every few seconds so a restarted backend is found soon
                limit = self.timeout if self.state == ONLINE else min(self.timeout, RETRY_INTERVAL)
                if silent > limit:
                    msg = (f"no answer from {self.address} for {silent:.0f} s" if self.state == ONLINE else
                           self.error or f"no backend answers at {self.address}")
                    for p in pending.values():
                        self._emit(p.job, P.EV_ERROR, code=E_DISCONNECTED,
                                   message=f"lost the backend ({msg}); the {p.op} job was stopped")
                    pending.clear()
                    by_request.clear()
                    self._set_state(OFFLINE, msg)
                    _close(client)
                    client, hello_id, ping_id = None, None, None
                    continue
                if now - last_ping > self.heartbeat and hello_id is None and ping_id is None:
                    # while the model loads, ask for the status (it names the device and head model when ready)
                    ping_id = _send(client, P.OP_PING if self.info.get("engine") in ("ready", "failed") else P.OP_STATUS)
                    last_ping = now
        finally:
            _close(client)


def _hello(client, name: str) -> str:
    return client.submit(P.OP_HELLO, versions=list(P.SUPPORTED_VERSIONS), client=name)


def _send(client, op: str, **fields: Any) -> str | None:
    """``client.submit`` that reports failure as None (the liveness check then notices a dead peer)."""
    try:
        return client.submit(op, **fields)
    except Exception as e:  # noqa: BLE001 - never let the worker thread die
        log.warning("could not send %s: %s", op, e)
        return None


def _close(client) -> None:
    if client is not None:
        try:
            client.close()
        except Exception:  # noqa: BLE001
            pass
