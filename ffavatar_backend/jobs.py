"""Jobs: one work request (reconstruct, personalize, animate, export_ply) from queueing to its end.

A job is keyed by (client identity, request id), so two clients may use the same ids and only the
client that submitted a job can cancel it or feed it frames. The registry bounds the queue (full →
:class:`~ffavatar.errors.Busy`) and is shared by the I/O thread (submit, cancel, feed) and the
worker thread (take, finish) under one lock.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ffavatar.errors import Busy, Cancelled, InvalidInput, LimitExceeded, ProtocolError

QUEUED, RUNNING, DONE = "queued", "running", "done"


class FrameFeed:
    """Driver frames streamed in by ``animate_chunk`` messages: a bounded FIFO of encoded frames.

    The I/O thread ``push``es, the worker iterates; ``max_buffered`` bounds memory (a chunk that does
    not fit is refused with ``busy``), ``idle_timeout`` ends a stream whose client stopped sending.
    """

    def __init__(self, max_buffered: int, max_total: int, idle_timeout: float):
        self.max_buffered = max_buffered
        self.max_total = max_total
        self.idle_timeout = idle_timeout
        self._cond = threading.Condition()
        self._frames: deque[bytes] = deque()
        self._last = False
        self.received = 0

    def push(self, frames: list[bytes], last: bool) -> None:
        with self._cond:
            if self._last:
                raise InvalidInput("this animate stream already got its last chunk")
            if len(self._frames) + len(frames) > self.max_buffered:
                raise Busy(f"{len(self._frames)} streamed frames are still waiting to be animated (at most "
                           f"{self.max_buffered}); send more slowly or wait for frame events")
            if self.received + len(frames) > self.max_total:
                raise LimitExceeded(f"a stream may have at most {self.max_total} frames")
            self._frames.extend(frames)
            self.received += len(frames)
            self._last = self._last or last
            self._cond.notify_all()

    def close(self) -> None:
        """Wake the reader (on cancel)."""
        with self._cond:
            self._cond.notify_all()

    def iterate(self, cancelled: threading.Event) -> Iterator[bytes]:
        """Encoded frames in arrival order until the last chunk; raises Cancelled / ProtocolError (idle)."""
        while True:
            with self._cond:
                deadline = time.monotonic() + self.idle_timeout
                while not self._frames and not self._last:
                    if cancelled.is_set():
                        raise Cancelled("job cancelled")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ProtocolError(f"no animate_chunk for {self.idle_timeout:.0f} s; the stream was ended",
                                            hint="send chunks regularly and one with last=true at the end")
                    self._cond.wait(min(left, 0.25))
                if not self._frames:
                    return
                data = self._frames.popleft()
            yield data


@dataclass
class Job:
    """One work request. ``fields`` are the validated request fields (protocol.validate)."""

    peer: bytes
    id: str
    op: str
    fields: dict[str, Any]
    state: str = QUEUED
    fraction: float = 0.0
    cancel_event: threading.Event = field(default_factory=threading.Event)
    feed: FrameFeed | None = None
    created: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[bytes, str]:
        return self.peer, self.id

    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancel(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled(f"job {self.id} was cancelled")


class JobRegistry:
    """Active jobs and the bounded work queue."""

    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._jobs: dict[tuple[bytes, str], Job] = {}
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._queued = 0
        self.running: Job | None = None

    def submit(self, job: Job) -> None:
        """Queue a job; Busy when ``max_queue`` jobs already wait; ProtocolError for a reused id."""
        with self._lock:
            if job.key in self._jobs:
                raise ProtocolError(f"request id {job.id!r} is already in use by an active job")
            if self._queued >= self.max_queue:
                raise Busy(f"the work queue is full ({self.max_queue} jobs waiting)", hint="retry later")
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

    def finish(self, job: Job) -> bool:
        """Mark done; False if it already was (so exactly one final event is sent)."""
        with self._lock:
            if job.state == DONE:
                return False
            if job.state == QUEUED:
                self._queued -= 1
            job.state = DONE
            self._jobs.pop(job.key, None)
            if self.running is job:
                self.running = None
            return True

    def get(self, peer: bytes, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get((peer, job_id))

    def cancel(self, peer: bytes, job_id: str) -> Job | None:
        """Flag a job cancelled; returns it (still queued or running) or None when unknown."""
        with self._lock:
            job = self._jobs.get((peer, job_id))
        if job is not None:
            job.cancel_event.set()
            if job.feed is not None:
                job.feed.close()
        return job

    def cancel_peer(self, peer: bytes) -> list[Job]:
        """Cancel every job of a client that went away."""
        with self._lock:
            jobs = [j for (p, _), j in self._jobs.items() if p == peer]
        for job in jobs:
            self.cancel(peer, job.id)
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
            job.cancel_event.set()
            if job.feed is not None:
                job.feed.close()
        self._queue.put(None)
