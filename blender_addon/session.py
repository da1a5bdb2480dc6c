"""Jobs on top of the :class:`~.link.Link` (no bpy): routing events to handlers, blocking waits.

The UI calls :meth:`Session.pump` from a ``bpy.app.timers`` callback; tests and batch runs call
:meth:`Session.wait` / :meth:`Session.call`, which pump in a loop with timeouts (timers never fire
in ``blender -b`` scripts or the bpy module). Handlers are plain functions ``handler(job, event)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .link import ONLINE, Link

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
Handler = Callable[["Job", dict], None]


class JobFailed(RuntimeError):
    """A job ended with an error event; ``code`` is the protocol's error code."""

    def __init__(self, job: Job):
        self.job = job
        self.code = job.error_code
        super().__init__(f"{job.op} failed [{job.error_code}]: {job.error}")


@dataclass
class Job:
    """One request and what came back for it."""

    id: str
    op: str
    label: str = ""
    state: str = QUEUED
    fraction: float = 0.0
    message: str = ""
    result: dict | None = None
    error: str = ""
    error_code: str = ""
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    frames: int = 0
    on_event: Handler | None = None
    on_done: Handler | None = None
    data: dict = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state in (QUEUED, RUNNING)

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started


class Session:
    """Owns a :class:`Link` and the jobs sent through it."""

    def __init__(self, link: Link):
        self.link = link
        self.jobs: dict[str, Job] = {}
        self.handler_errors: list[str] = []
        self.on_link: Callable[[dict], None] | None = None

    @property
    def online(self) -> bool:
        return self.link.state == ONLINE

    def start(self, op: str, *, label: str = "", on_event: Handler | None = None, on_done: Handler | None = None,
              chunks=None, **fields: Any) -> Job:
        """Send a request; events go to ``on_event(job, event)``, the final one also to ``on_done``."""
        jid = self.link.submit(op, chunks=chunks, **fields)
        job = Job(jid, op, label or op, on_event=on_event, on_done=on_done)
        self.jobs[jid] = job
        return job

    def cancel(self, job: Job) -> None:
        if job.active:
            job.message = "cancelling..."
            self.link.cancel(job.id)

    def active_jobs(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.active]

    def dispatch(self, ev: dict) -> Job | None:
        """Apply one event to its job and run the handlers. Handler exceptions fail the job
        (cancelling it on the backend) instead of escaping into the timer."""
        if ev.get("event") == "link":
            if self.on_link is not None:
                self.on_link(ev)
            return None
        job = self.jobs.get(ev.get("id"))
        if job is None or not job.active:
            return None
        kind = ev.get("event")
        if kind == "progress":
            job.state = QUEUED if "queued" in ev and not ev.get("fraction") else RUNNING
            job.fraction = float(ev.get("fraction", job.fraction))
            job.message = str(ev.get("message", ""))
        elif kind == "frame":
            job.state = RUNNING
            job.frames += 1
        elif kind == "result":
            job.state, job.result, job.fraction = DONE, ev, 1.0
        elif kind == "error":
            job.error_code = str(ev.get("code", "internal"))
            job.error = str(ev.get("message", ""))
            job.state = CANCELLED if job.error_code == "cancelled" else FAILED
        try:
            if job.on_event is not None:
                job.on_event(job, ev)
            if not job.active:
                job.finished = time.monotonic()
                if job.on_done is not None:
                    job.on_done(job, ev)
        except Exception as e:  # noqa: BLE001 - a failing handler must not kill the timer
            log.exception("handler of %s failed", job.op)
            self.handler_errors.append(f"{job.op}: {e}")
            if job.active:
                self.link.cancel(job.id)
            job.state, job.error_code, job.error = FAILED, "client", f"{type(e).__name__}: {e}"
            job.finished = job.finished or time.monotonic()
        return job

    def pump(self, max_seconds: float = 0.02) -> int:
        """Dispatch waiting events for at most ``max_seconds`` (the UI budget); returns how many."""
        deadline = time.monotonic() + max_seconds
        n = 0
        while time.monotonic() < deadline:
            events = self.link.events(max_events=64)
            if not events:
                break
            for ev in events:
                self.dispatch(ev)
                n += 1
        return n

    def wait(self, job: Job, timeout: float, *, idle_timeout: float | None = None) -> Job:
        """Block until ``job`` ends (batch mode). Raises :class:`JobFailed` on an error event and
        ``TimeoutError`` after ``timeout`` s overall or ``idle_timeout`` s without any event."""
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while job.active:
            now = time.monotonic()
            if now > deadline:
                self.cancel(job)
                raise TimeoutError(f"{job.label} did not finish within {timeout:.0f} s")
            if idle_timeout is not None and now - last > idle_timeout:
                self.cancel(job)
                raise TimeoutError(f"{job.label}: no event from the backend for {idle_timeout:.0f} s")
            events = self.link.wait_events(min(0.25, max(deadline - now, 0.0)))
            if events:
                last = time.monotonic()
            for ev in events:
                self.dispatch(ev)
        if job.state != DONE:
            raise JobFailed(job)
        return job

    def call(self, op: str, timeout: float = 10.0, **fields: Any) -> dict:
        """A blocking request (control ops: list_avatars, get_rig, status...) -> its result fields."""
        job = self.wait(self.start(op, **fields), timeout)
        return {k: v for k, v in (job.result or {}).items() if k not in ("v", "id", "event")}
