"""The backend server: one ROUTER socket, an I/O loop that answers control ops at once, a worker thread.

The I/O thread owns the socket. It decodes and validates each message, answers control ops
(hello, ping, status, cancel, list_avatars, delete_avatar, get_rig) immediately, queues work ops
for the worker (bounded: full → ``busy``), feeds streamed frames to their job, and sends what the
worker put in the outbox (woken by a doorbell pipe in the same poller). Every handler is guarded:
no message a client sends can stop the loop.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import zmq

import ffavatar
from ffavatar.errors import FFAvatarError, InvalidInput, NotFound

from . import protocol as P
from .engine import EngineHost
from .jobs import QUEUED, ByteBudget, Job, JobRegistry, payload_bytes
from .outbox import Doorbell, Outbox
from .security import (CurveServerKeys, RateLimitedLog, check_bind, handshake_monitor, log_handshake_event,
                       protect_ipc, secure_socket)
from .store import AvatarStore
from .worker import Worker, plain

log = logging.getLogger(__name__)

SERVER_NAME = f"ffavatar-backend {ffavatar.__version__}"


@dataclass
class ServerConfig:
    """Everything the server is started with (the ``serve`` command's options)."""

    bind: str = "tcp://127.0.0.1:5557"
    limits: P.Limits = field(default_factory=P.Limits)
    curve: CurveServerKeys | None = None
    slow_client_timeout: float = 30.0
    stream_idle_timeout: float = 60.0
    sndhwm: int = 32
    rcvhwm: int = 8
    """Messages ZeroMQ may queue per connection before it stops reading that connection (back-pressure)."""
    max_backlog_bytes: int = 64 << 20


def rig_to_wire(rig: dict[str, Any]) -> dict[str, Any]:
    """numpy arrays → ``{"dtype": '<f4', "shape": [...], "data": raw little-endian bytes}``; rest as is."""
    out: dict[str, Any] = {}
    for k, v in rig.items():
        if isinstance(v, np.ndarray):
            a = np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<"))
            out[k] = P.pack_array(a.tobytes(), a.dtype.str, list(a.shape))
        else:
            out[k] = plain(v)
    return out


class Server:
    """``Server(config, host, store).serve()``; ``stop()`` from any thread or a signal handler."""

    def __init__(self, config: ServerConfig, host: EngineHost, store: AvatarStore):
        check_bind(config.bind, config.curve)
        self.config, self.host, self.store = config, host, store
        self.limits = config.limits
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        self.sock.setsockopt(zmq.SNDHWM, config.sndhwm)
        self.sock.setsockopt(zmq.RCVHWM, config.rcvhwm)
        self.refusals = RateLimitedLog(logging.getLogger("ffavatar_backend.security"))  # refused keys
        self.handshakes = RateLimitedLog(logging.getLogger("ffavatar_backend.security"))  # failed handshakes
        self.auth = secure_socket(self.ctx, self.sock, config.curve, self.refusals)
        self.monitor = handshake_monitor(self.sock) if config.curve is not None else None
        self.doorbell = Doorbell()
        self.outbox = Outbox(self.doorbell, max_backlog_bytes=config.max_backlog_bytes)
        self.registry = JobRegistry(self.limits.max_queue,
                                    ByteBudget(self.limits.max_client_bytes, self.limits.max_total_bytes))
        self.worker = Worker(self.registry, self.outbox, host, store, self.limits,
                             slow_client_timeout=config.slow_client_timeout)
        self._stop = threading.Event()
        self.instance = secrets.token_hex(8)
        """Names this server process in the replies of the I/O loop: a client that sees it change knows
        that the jobs the old process had acknowledged are gone."""
        self._rigs: dict[int | None, dict] = {}
        self.started = time.time()
        self.endpoint = ""
        self.stats = {"messages": 0, "errors": 0}
        self._control: dict[str, Callable[[bytes, str, dict], dict]] = {
            P.OP_HELLO: self._hello, P.OP_PING: self._ping, P.OP_STATUS: self._status, P.OP_CANCEL: self._cancel,
            P.OP_LIST_AVATARS: self._list_avatars, P.OP_DELETE_AVATAR: self._delete_avatar,
            P.OP_GET_RIG: self._get_rig,
        }

    # ------------------------------------------------------------------------ lifecycle
    def bind(self) -> str:
        """Bind and return the actual endpoint (``tcp://127.0.0.1:*`` picks a free port)."""
        try:
            self.sock.bind(self.config.bind)
        except zmq.ZMQError as e:
            raise InvalidInput(f"cannot listen on {self.config.bind}: {e}",
                               hint="is another backend running there? pick another port with --bind") from None
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        protect_ipc(self.endpoint)
        log.info("listening on %s", self.endpoint)
        return self.endpoint

    def stop(self) -> None:
        self._stop.set()
        self.doorbell.ring()

    def serve(self) -> None:
        """Run the I/O loop until :meth:`stop`."""
        if not self.endpoint:
            self.bind()
        self.worker.start()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.doorbell.fd_read, zmq.POLLIN)
        if self.monitor is not None:
            poller.register(self.monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                timeout = 2 if self.outbox.pending() else 1000
                ready = dict(poller.poll(timeout))
                if self.doorbell.fd_read in ready:
                    self.doorbell.drain()
                if ready.get(self.sock):
                    self._receive_batch()
                if self.monitor is not None and ready.get(self.monitor):
                    log_handshake_event(self.monitor, self.handshakes)
                self.refusals.flush()
                self.handshakes.flush()
                self._flush()
        finally:
            self._shutdown()

    def _receive_batch(self, max_messages: int = 256) -> None:
        for _ in range(max_messages):
            try:
                # zero-copy: msgpack reads the ZeroMQ buffer directly, so an upload exists twice
                # (the message and its decoded bin values) while it is decoded, not three times
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._on_message([parts[0].bytes, *(p.buffer for p in parts[1:])])
            del parts
            if self.outbox.pending():
                self._flush()

    def _flush(self) -> None:
        try:
            gone = self.outbox.flush(self.sock)
        except zmq.ZMQError as e:  # never let a send error stop the loop
            log.error("send failed: %s", e)
            return
        for peer in gone:
            jobs = self.registry.cancel_peer(peer)
            for job in jobs:
                if job.state == QUEUED:  # free its input now, not when the worker reaches it
                    self.registry.finish(job)
            if jobs:
                log.info("client went away: cancelled %d job(s)", len(jobs))

    def _shutdown(self) -> None:
        log.info("shutting down")
        self.registry.shutdown()
        self.worker.join(timeout=5.0)
        deadline = time.monotonic() + 1.0
        while self.outbox.pending() and time.monotonic() < deadline:
            self._flush()
            time.sleep(0.005)
        self.refusals.flush(force=True)
        self.handshakes.flush(force=True)
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
        self.sock.close(linger=0)
        self.ctx.term()
        self.doorbell.close()

    # ------------------------------------------------------------------------ replies
    def reply(self, peer: bytes, rid: str | None, event: str, **fields: Any) -> None:
        """A reply of the I/O loop (control result, ``queued`` acknowledgement, early error): it names
        this server :attr:`instance`."""
        fields[P.INSTANCE] = self.instance
        self.outbox.put(peer, P.encode(P.make_event(rid, event, **fields)), droppable=True)

    def error(self, peer: bytes, rid: str | None, code: str, message: str, **fields: Any) -> None:
        self.stats["errors"] += 1
        self.reply(peer, rid, P.EV_ERROR, code=code, message=message, **fields)

    # ------------------------------------------------------------------------ dispatch
    def _on_message(self, frames: list) -> None:
        """``frames``: the peer's routing id (bytes), then the message frame(s) (buffers)."""
        self.stats["messages"] += 1
        peer = frames[0]
        if len(frames) != 2:
            self.error(peer, None, P.E_PROTOCOL, f"expected one frame per message, got {len(frames) - 1}; "
                                                 "send each request as a single msgpack frame from a DEALER socket")
            return
        rid = None
        try:
            msg = P.decode(frames[1], self.limits.max_message_bytes)
            rid = P.request_id_of(msg)
            op, rid, fields = P.validate(msg, self.limits)
            if op in self._control:
                result = self._control[op](peer, rid, fields)
                self.reply(peer, rid, P.EV_RESULT, **result)
            elif op == P.OP_ANIMATE_CHUNK:
                self._animate_chunk(peer, rid, fields)
            else:
                self._submit(peer, rid, op, fields)
        except P.WireError as e:
            self.error(peer, rid, e.code, e.message)
        except FFAvatarError as e:
            self.error(peer, rid, e.code, str(e))
        except Exception as e:  # noqa: BLE001 - nothing a client sends may stop the server
            log.exception("handler failed")
            self.error(peer, rid, P.E_INTERNAL, f"internal error: {type(e).__name__}: {e}")

    def _submit(self, peer: bytes, rid: str, op: str, fields: dict) -> None:
        job = Job(peer=peer, id=rid, op=op, fields=fields, held=payload_bytes(fields))
        if op == P.OP_ANIMATE and fields["stream"]:
            job.feed = self.registry.new_feed(job, self.limits.max_buffered_frames, self.limits.max_frames,
                                              self.config.stream_idle_timeout, self.limits.max_stream_bytes)
        if "avatar" in fields:
            self.store.get(fields["avatar"])  # an unknown avatar fails now, not after the queue
        ahead = self.registry.queued_count() + (1 if self.registry.running else 0)
        self.registry.submit(job)
        self.reply(peer, rid, P.EV_PROGRESS, fraction=0.0, message=f"queued ({ahead} job(s) ahead)", queued=ahead)

    def _animate_chunk(self, peer: bytes, rid: str, fields: dict) -> None:
        job = self.registry.get(peer, fields["job"])
        if job is None or job.feed is None:
            raise NotFound(f"no streaming animate job {fields['job']!r} from this connection",
                           hint="start one with op 'animate' and stream: true, then send chunks with its id")
        job.feed.push(fields["frames"], fields["last"])

    # ------------------------------------------------------------------------ control ops
    def _hello(self, peer: bytes, rid: str, fields: dict) -> dict:
        version = P.negotiate(fields["versions"])
        return {"protocol": version, "server": SERVER_NAME, **self.host.info(),
                "limits": self.limits.to_dict(), "ops": sorted(P.ALL_OPS), "formats": list(P.FORMATS),
                "curve": self.config.curve is not None}

    def _ping(self, peer: bytes, rid: str, fields: dict) -> dict:
        return {"pong": True, "time": time.time()}

    def _status(self, peer: bytes, rid: str, fields: dict) -> dict:
        running = self.registry.running
        return {**self.host.info(), "queued": self.registry.queued_count(), "max_queue": self.limits.max_queue,
                "running": {"op": running.op, "fraction": running.fraction} if running else None,
                "jobs": [{"id": j.id, "op": j.op, "state": j.state, "fraction": j.fraction}
                         for j in self.registry.jobs_of(peer)],
                "input_bytes": self.registry.budget.held(peer),
                "avatars": len(self.store), "uptime_s": round(time.time() - self.started, 3), "pid": os.getpid(),
                "messages": self.stats["messages"], "errors": self.stats["errors"], "dropped": self.outbox.dropped}

    def _cancel(self, peer: bytes, rid: str, fields: dict) -> dict:
        job = self.registry.cancel(peer, fields["job"])
        if job is None:
            return {"job": fields["job"], "cancelled": False, "reason": "no such job from this connection "
                    "(finished already, or never submitted)"}
        if job.state == QUEUED:
            self.registry.finish(job, lambda: self.outbox.put(peer, P.encode(P.make_error(
                job.id, P.E_CANCELLED, f"job {job.id} was cancelled before it started"))))
        return {"job": job.id, "cancelled": True}

    def _list_avatars(self, peer: bytes, rid: str, fields: dict) -> dict:
        return {"avatars": self.store.list()}

    def _delete_avatar(self, peer: bytes, rid: str, fields: dict) -> dict:
        self.store.delete(fields["avatar"])
        return {"deleted": fields["avatar"]}

    def _get_rig(self, peer: bytes, rid: str, fields: dict) -> dict:
        engine = self.host.get(timeout=0)
        n_expr = fields["n_expr"]
        if n_expr not in self._rigs:
            if len(self._rigs) >= 8:
                self._rigs.clear()
            self._rigs[n_expr] = rig_to_wire(engine.rig(n_expr))
        return {"rig": self._rigs[n_expr]}
