"""Outbound messages per client, bounded, in order, handed to the ROUTER socket by the I/O thread.

ZeroMQ sockets are not thread safe, so worker threads never touch the ROUTER: they ``put`` encoded
events here and ring a doorbell (a pipe the I/O loop polls next to the socket). The I/O thread
``flush``es with non-blocking sends; when a client's pipe is at its high-water mark (it reads too
slowly) the rest waits here. Memory stays bounded: producers of bulky events (frames) wait for room
with :meth:`wait_for_room` and give up after a timeout, and small droppable replies are dropped
when a client's backlog is over its cap.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable

import zmq

log = logging.getLogger(__name__)


class Doorbell:
    """Wakes the I/O loop from any thread: a non-blocking pipe whose read end the zmq poller watches."""

    def __init__(self) -> None:
        self.fd_read, self._fd_write = os.pipe()
        os.set_blocking(self.fd_read, False)
        os.set_blocking(self._fd_write, False)
        self._rung = threading.Event()

    def ring(self) -> None:
        if self._rung.is_set():
            return
        self._rung.set()
        try:
            os.write(self._fd_write, b"\0")
        except (BlockingIOError, OSError):
            pass

    def drain(self) -> None:
        """Empty the pipe, then re-arm. In this order a ring that comes while the pipe is read either
        finds the flag still set (its message was queued before the loop's next flush) or writes a
        new byte; clearing first could swallow that byte and leave the flag set forever: every later
        ring would be skipped and the loop would only wake at its poll timeout."""
        try:
            while os.read(self.fd_read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self._rung.clear()

    def close(self) -> None:
        for fd in (self.fd_read, self._fd_write):
            try:
                os.close(fd)
            except OSError:
                pass


class Outbox:
    """Per-peer FIFO queues of encoded messages.

    ``max_backlog_bytes``: above this a peer's droppable messages are dropped. ``room_bytes``: the
    backlog below which :meth:`wait_for_room` lets a producer go on.
    """

    def __init__(self, doorbell: Doorbell, *, max_backlog_bytes: int = 64 << 20, max_backlog_msgs: int = 10_000,
                 room_bytes: int = 16 << 20):
        self.doorbell = doorbell
        self.max_backlog_bytes = max_backlog_bytes
        self.max_backlog_msgs = max_backlog_msgs
        self.room_bytes = room_bytes
        self._cond = threading.Condition()
        self._queues: dict[bytes, deque[bytes]] = {}
        self._bytes: dict[bytes, int] = {}
        self._gone: set[bytes] = set()
        self.dropped = 0

    def put(self, peer: bytes, data: bytes, *, droppable: bool = False) -> bool:
        """Queue ``data`` for ``peer`` (any thread). False when dropped (backlog full or peer gone)."""
        with self._cond:
            if peer in self._gone:
                return False
            q = self._queues.setdefault(peer, deque())
            size = self._bytes.get(peer, 0)
            if droppable and (size + len(data) > self.max_backlog_bytes or len(q) >= self.max_backlog_msgs):
                self.dropped += 1
                return False
            q.append(data)
            self._bytes[peer] = size + len(data)
        self.doorbell.ring()
        return True

    def backlog(self, peer: bytes) -> int:
        with self._cond:
            return self._bytes.get(peer, 0)

    def wait_for_room(self, peer: bytes, timeout: float, stop: Callable[[], bool]) -> bool:
        """Block until ``peer``'s backlog is below ``room_bytes``; False after ``timeout`` s or when
        ``stop()`` turns true or the peer is gone."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._bytes.get(peer, 0) > self.room_bytes:
                if peer in self._gone or stop():
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return peer not in self._gone

    def pending(self) -> bool:
        with self._cond:
            return any(self._queues.values())

    def flush(self, sock: zmq.Socket) -> list[bytes]:
        """Send what each peer's pipe accepts (I/O thread only). Returns peers found disconnected."""
        gone: list[bytes] = []
        with self._cond:
            peers = [p for p, q in self._queues.items() if q]
        for peer in peers:
            while True:
                with self._cond:
                    q = self._queues.get(peer)
                    if not q:
                        break
                    data = q[0]
                try:
                    sock.send_multipart([peer, data], flags=zmq.NOBLOCK, copy=len(data) < 65536)
                except zmq.Again:
                    break  # the client's pipe is full: it reads slowly; retry on the next loop turn
                except zmq.ZMQError as e:
                    if e.errno == zmq.EHOSTUNREACH:
                        gone.append(peer)
                        break
                    raise
                with self._cond:
                    q.popleft()
                    self._bytes[peer] -= len(data)
                    self._cond.notify_all()
        for peer in gone:
            self.forget(peer, gone=True)
        with self._cond:
            for p in [p for p, q in self._queues.items() if not q]:
                del self._queues[p]
                self._bytes.pop(p, None)
        return gone

    def forget(self, peer: bytes, *, gone: bool = False) -> None:
        """Drop everything queued for ``peer``; with ``gone`` also refuse further messages to it."""
        with self._cond:
            q = self._queues.pop(peer, None)
            self._bytes.pop(peer, None)
            if gone:
                self._gone.add(peer)
                if len(self._gone) > 100_000:
                    self._gone.clear()
            self._cond.notify_all()
        if q:
            log.info("dropped %d undeliverable messages for a disconnected client", len(q))
