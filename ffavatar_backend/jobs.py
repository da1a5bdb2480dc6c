"""Jobs: one work request (reconstruct, personalize, animate, export_ply) from queueing to its end.

A job is keyed by (client identity, request id), so two clients may use the same ids and only the
client that submitted a job can cancel it or feed it frames. The registry bounds the queue (full →
:class:`~ffavatar.errors.Busy`) and the input bytes that jobs hold (:class:`ByteBudget`), and is
shared by the I/O thread (submit, cancel, feed) and the worker thread (take, finish) under one lock.

Ordering guarantees (what clients may rely on, per connection):

* a job's final event is queued for sending while the registry lock is held, so a ``cancel`` that
  finds no such job is answered *after* that job's final event: ``cancelled: false`` while a job is
  still in flight on the client means the server does not know it (it restarted);
* the worker queues frames and tracks under the job's lock after checking for a cancel, and a cancel
  is flagged under the same lock, so no frame of a job follows the reply to its ``cancel``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ffavatar.errors import Busy, Cancelled, InvalidInput, LimitExceeded, ProtocolError

QUEUED, RUNNING, DONE = "queued", "running", "done"

PAYLOAD_FIELDS = ("images", "frames", "video")
"""Request fields that carry bulk input (binary); their bytes count against the budgets."""


def payload_bytes(fields: dict[str, Any]) -> int:
    """Bytes of bulk input a validated request carries (images, frames, video)."""
    n = 0
    for name in PAYLOAD_FIELDS:
        value = fields.get(name)
        if isinstance(value, bytes):
            n += len(value)
        elif isinstance(value, list):
            n += sum(len(v) for v in value if isinstance(v, bytes))
    return n


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class ByteBudget:
    """Input bytes held by active jobs, per client connection and in total (thread safe).

    ``reserve`` raises :class:`~ffavatar.errors.LimitExceeded` for a request that could never fit
    and :class:`~ffavatar.errors.Busy` for one that fits once other jobs have finished."""

    def __init__(self, per_client: int, total: int):
        self.per_client, self.total = per_client, total
        self._lock = threading.Lock()
        self._held: dict[bytes, int] = {}
        self._sum = 0

    def reserve(self, peer: bytes, n: int, what: str) -> None:
        if n <= 0:
            return
        if n > self.per_client or n > self.total:
            raise LimitExceeded(f"{what} holds {_mib(n)}; a client may have at most {_mib(min(self.per_client, self.total))} "
                                "of input in the server at once")
        with self._lock:
            mine = self._held.get(peer, 0)
            if mine + n > self.per_client:
                raise Busy(f"{what} ({_mib(n)}) does not fit: this connection's jobs already hold {_mib(mine)} of "
                           f"input (at most {_mib(self.per_client)})", hint="wait for your jobs to finish, or send less at once")
            if self._sum + n > self.total:
                raise Busy(f"{what} ({_mib(n)}) does not fit: the server holds {_mib(self._sum)} of input for all "
                           f"clients (at most {_mib(self.total)})", hint="retry later")
            self._held[peer] = mine + n
            self._sum += n

    def release(self, peer: bytes, n: int) -> None:
        if n <= 0:
            return
        with self._lock:
            left = self._held.get(peer, 0) - n
            if left > 0:
                self._held[peer] = left
            else:
                self._held.pop(peer, None)
            self._sum = max(0, self._sum - n)

    def held(self, peer: bytes | None = None) -> int:
        with self._lock:
            return self._sum if peer is None else self._held.get(peer, 0)


class FrameFeed:
    """Driver frames streamed in by ``animate_chunk`` messages: a bounded FIFO of encoded frames.

    The I/O thread ``push``es, the worker iterates. Memory is bounded in frames (``max_buffered``)
    and in bytes (``max_bytes`` for this job, and the ``reserve``/``release`` budget of its client
    and the server): a chunk that does not fit is refused with ``busy`` and nothing of it is kept.
    ``idle_timeout`` ends a stream whose client stopped sending. :meth:`close` drops what waits.
    """

    def __init__(self, max_buffered: int, max_total: int, idle_timeout: float, *, max_bytes: int = 64 << 20,
                 reserve: Callable[[int], None] | None = None, release: Callable[[int], None] | None = None):
        self.max_buffered = max_buffered
        self.max_total = max_total
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout
        self._reserve = reserve or (lambda n: None)
        self._release = release or (lambda n: None)
        self._cond = threading.Condition()
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self._last = False
        self._closed = False
        self.received = 0

    def push(self, frames: list[bytes], last: bool) -> None:
        size = sum(len(f) for f in frames)
        with self._cond:
            if self._closed:  # the job was cancelled: its own final event tells the client; nothing is kept
                return
            if self._last:
                raise InvalidInput("this animate stream already got its last chunk")
            if size > self.max_bytes:
                raise LimitExceeded(f"a chunk of {_mib(size)} is over the {_mib(self.max_bytes)} a stream may buffer")
            if len(self._frames) + len(frames) > self.max_buffered or self._bytes + size > self.max_bytes:
                raise Busy(f"{len(self._frames)} streamed frames ({_mib(self._bytes)}) are still waiting to be "
                           f"animated (at most {self.max_buffered} frames, {_mib(self.max_bytes)}); send more "
                           "slowly or wait for frame events")
            if self.received + len(frames) > self.max_total:
                raise LimitExceeded(f"a stream may have at most {self.max_total} frames")
            self._reserve(size)  # Busy/LimitExceeded when the client's or the server's budget is spent
            self._frames.extend(frames)
            self._bytes += size
            self.received += len(frames)
            self._last = self._last or last
            self._cond.notify_all()

    def close(self) -> None:
        """Drop the waiting frames (their bytes go back to the budget) and wake the reader."""
        with self._cond:
            self._closed = True
            self._frames.clear()
            freed, self._bytes = self._bytes, 0
            self._cond.notify_all()
        self._release(freed)

    @property
    def buffered_bytes(self) -> int:
        with self._cond:
            return self._bytes

    def iterate(self, cancelled: threading.Event) -> Iterator[bytes]:
        """Encoded frames in arrival order until the last chunk; raises Cancelled / ProtocolError (idle)."""
        while True:
            with self._cond:
                deadline = time.monotonic() + self.idle_timeout
                while not self._frames and not self._last:
                    if cancelled.is_set() or self._closed:
                        raise Cancelled("job cancelled")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ProtocolError(f"no animate_chunk for {self.idle_timeout:.0f} s; the stream was ended",
                                            hint="send chunks regularly and one with last=true at the end")
                    self._cond.wait(min(left, 0.25))
                if not self._frames:
                    return
                data = self._frames.popleft()
                self._bytes -= len(data)
            self._release(len(data))
            yield data


@dataclass
class Job:
    """One work request. ``fields`` are the validated request fields (protocol.validate); ``held``
    the payload bytes reserved for it in the registry's budget until it ends."""

    peer: bytes
    id: str
    op: str
    fields: dict[str, Any]
    state: str = QUEUED
    fraction: float = 0.0
    cancel_event: threading.Event = field(default_factory=threading.Event)
    feed: FrameFeed | None = None
    created: float = field(default_factory=time.monotonic)
    held: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Taken to flag a cancel and to queue a frame, so no frame follows the reply to a cancel."""

    @property
    def key(self) -> tuple[bytes, str]:
        return self.peer, self.id

    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancel(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled(f"job {self.id} was cancelled")

    def cancel(self) -> None:
        with self.lock:
            self.cancel_event.set()
        if self.feed is not None:
            self.feed.close()

    def unless_cancelled(self, send: Callable[[], Any]) -> None:
        """Run ``send`` (queue an event) unless the job was cancelled (then raise Cancelled), atomically
        with respect to :meth:`cancel`."""
        with self.lock:
            self.check_cancel()
            send()


class JobRegistry:
    """Active jobs, the bounded work queue and the input byte budget."""

    def __init__(self, max_queue: int, budget: ByteBudget | None = None):
        self.max_queue = max_queue
        self.budget = budget or ByteBudget(1 << 62, 1 << 62)
        self._lock = threading.Lock()
        self._jobs: dict[tuple[bytes, str], Job] = {}
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._queued = 0
        self.running: Job | None = None

    def new_feed(self, job: Job, max_buffered: int, max_total: int, idle_timeout: float, max_bytes: int) -> FrameFeed:
        """A FrameFeed for ``job`` whose buffered bytes count against its client's budget."""
        return FrameFeed(max_buffered, max_total, idle_timeout, max_bytes=max_bytes,
                         reserve=lambda n: self.budget.reserve(job.peer, n, "a streamed chunk"),
                         release=lambda n: self.budget.release(job.peer, n))

    def submit(self, job: Job) -> None:
        """Queue a job; Busy when ``max_queue`` jobs already wait or its input does not fit the budget;
        ProtocolError for a reused id."""
        with self._lock:
            if job.key in self._jobs:
                raise ProtocolError(f"request id {job.id!r} is already in use by an active job")
            if self._queued >= self.max_queue:
                raise Busy(f"the work queue is full ({self.max_queue} jobs waiting)", hint="retry later")
            self.budget.reserve(job.peer, job.held, f"the {job.op} request")
            self._jobs[job.key] = job
            self._queued += 1
        self._queue.put(job)

    def take(self, timeout: float | None = None) -> Job | None:
        """Next job to run (worker thread), skipping cancelled ones; None on shutdown or timeout."""
        while True:
            try:
                job = self._queue.get(timeout=timeout)
            except queue.Empty:
                return None
            if job is None:
                return None
            with self._lock:
                if job.state == DONE:  # cancelled while queued (already counted out in finish)
                    continue
                self._queued -= 1
                job.state = RUNNING
                self.running = job
                return job

    def finish(self, job: Job, final: Callable[[], Any] | None = None) -> bool:
        """Mark done and run ``final`` (queue the final event) under the registry lock; False if it
        already was done (so exactly one final event is sent). Frees the job's input at once."""
        with self._lock:
            if job.state == DONE:
                return False
            if job.state == QUEUED:
                self._queued -= 1
            job.state = DONE
            self._jobs.pop(job.key, None)
            if self.running is job:
                self.running = None
            if final is not None:
                final()
        self._release_input(job)
        return True

    def _release_input(self, job: Job) -> None:
        """Drop the job's payload (a cancelled queued job may wait in the queue a long while) and give
        its bytes back to the budget."""
        for name in PAYLOAD_FIELDS:
            if name in job.fields:
                job.fields[name] = None
        held, job.held = job.held, 0
        self.budget.release(job.peer, held)
        if job.feed is not None:
            job.feed.close()

    def get(self, peer: bytes, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get((peer, job_id))

    def cancel(self, peer: bytes, job_id: str) -> Job | None:
        """Flag a job cancelled; returns it (still queued or running) or None when unknown."""
        with self._lock:
            job = self._jobs.get((peer, job_id))
        if job is not None:
            job.cancel()
        return job

    def cancel_peer(self, peer: bytes) -> list[Job]:
        """Cancel every job of a client that went away."""
        with self._lock:
            jobs = [j for (p, _), j in self._jobs.items() if p == peer]
        for job in jobs:
            job.cancel()
        return jobs

    def jobs_of(self, peer: bytes) -> list[Job]:
        with self._lock:
            return [j for (p, _), j in self._jobs.items() if p == peer]

    def queued_count(self) -> int:
        with self._lock:
            return self._queued

    def all_jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def shutdown(self) -> None:
        for job in self.all_jobs():
            job.cancel()
        self._queue.put(None)
