"""Start a backend as a child process and learn its endpoint. PURE (standard library only).

The server prints one JSON line on stdout once it listens (``{"event": "listening", "endpoint": ...}``);
:class:`ServerProcess` waits for that line (with a timeout), so ``--bind tcp://127.0.0.1:*`` can pick
a free port. Used by the tests, the benchmark, and a Blender add-on that runs its own backend.
"""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence


class ServerStartError(RuntimeError):
    """The backend exited or printed nothing before its ``listening`` line."""


class ServerProcess:
    """A running backend child process; ``endpoint`` is where it listens."""

    def __init__(self, args: Sequence[str] = (), *, python: str | None = None, timeout: float = 60.0,
                 env: dict[str, str] | None = None, stderr=None, preexec_fn=None):
        """``preexec_fn`` runs in the child before the backend starts (POSIX; e.g. resource limits)."""
        cmd = [python or sys.executable, "-m", "ffavatar_backend", "serve", *args]
        if not any(a == "--bind" or a.startswith("--bind=") for a in args):
            cmd += ["--bind", "tcp://127.0.0.1:*"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True,
                                     preexec_fn=preexec_fn)
        self.pid = self.proc.pid
        try:
            self.info = self._read_ready(timeout)
        except BaseException:
            self.kill()
            raise
        self.endpoint: str = self.info["endpoint"]

    def _read_ready(self, timeout: float) -> dict:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerStartError(f"the backend printed no 'listening' line within {timeout:g} s")
                if sel.select(left):
                    line = self.proc.stdout.readline()
                    if not line:
                        code = self.proc.wait(timeout=10)
                        raise ServerStartError(f"the backend exited with code {code} before listening")
                    try:
                        doc = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(doc, dict) and doc.get("event") == "listening":
                        return doc
        finally:
            sel.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (graceful), then SIGKILL after ``timeout`` s. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait()
        self._close()
        return code

    def kill(self) -> None:
        """SIGKILL now (no cleanup in the server: what a crash looks like)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise OSError("VmRSS not found")

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

