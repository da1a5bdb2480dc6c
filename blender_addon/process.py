"""Starting and stopping a local backend as a subprocess (no bpy).

The command is a Python of an environment with ffavatar installed plus its arguments, e.g.
``/opt/ffavatar/.venv/bin/python -m ffavatar_backend serve --device auto``. ``--bind`` is added when
absent; the server prints ``{"event": "listening", "endpoint": ...}`` on stdout once it listens,
which :meth:`BackendProcess.wait_listening` waits for. stderr goes to a log file.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


class BackendStartError(RuntimeError):
    """The backend command could not start or did not listen in time (the message quotes its log)."""


def split_command(command: str | list[str]) -> list[str]:
    """A command line string (shell-like quoting) or an argv list -> argv."""
    argv = shlex.split(command, posix=os.name != "nt") if isinstance(command, str) else [str(a) for a in command]
    if not argv:
        raise BackendStartError("the backend command is empty; set it in the add-on preferences "
                                "(a Python with ffavatar installed, then -m ffavatar_backend serve)")
    return argv


def with_bind(argv: list[str], bind: str) -> list[str]:
    """``argv`` with ``--bind bind`` unless it already names one."""
    if any(a == "--bind" or a.startswith("--bind=") for a in argv):
        return list(argv)
    return [*argv, "--bind", bind]


class BackendProcess:
    """One backend subprocess."""

    def __init__(self, command: str | list[str], *, bind: str = "tcp://127.0.0.1:5557",
                 log_path: str | Path | None = None, env: dict | None = None):
        self.argv = with_bind(split_command(command), bind)
        self.log_path = Path(log_path) if log_path else None
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.endpoint: str | None = None
        self.stdout_lines: list[str] = []
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None
        self._log_file = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> BackendProcess:
        if self.alive:
            return self
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        log.info("starting backend: %s", " ".join(shlex.quote(a) for a in self.argv))
        try:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self._log_file or subprocess.DEVNULL,
                                         stdin=subprocess.DEVNULL, env=self.env, text=True, bufsize=1)
        except OSError as e:
            raise BackendStartError(f"cannot run {self.argv[0]!r}: {e}; check the backend command in the "
                                    "add-on preferences") from None
        self._listening.clear()
        self._reader = threading.Thread(target=self._read_stdout, name="ffavatar-backend-stdout", daemon=True)
        self._reader.start()
        return self

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            self.stdout_lines = (self.stdout_lines + [line])[-50:]
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("event") == "listening":
                self.endpoint = str(msg.get("endpoint"))
                self._listening.set()

    def log_tail(self, n: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def wait_listening(self, timeout: float = 60.0) -> str:
        """Block until the server prints its endpoint; returns it. Raises :class:`BackendStartError`
        if the process exits or stays silent for ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise BackendStartError(f"the backend exited (code {code}) before listening:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BackendStartError(f"the backend did not listen within {timeout:.0f} s:\n{self.log_tail()}")
        assert self.endpoint is not None
        return self.endpoint

    def stop(self, timeout: float = 5.0) -> int | None:
        """Terminate (then kill after ``timeout``); returns the exit code."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout)
            code = self.proc.returncode
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        if self._reader is not None:
            self._reader.join(1.0)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code
