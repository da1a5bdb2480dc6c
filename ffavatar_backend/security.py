"""Who may talk to the backend: loopback by default, CurveZMQ keys for anything else.

* A ``tcp://`` bind on a non-loopback address (``*``, ``0.0.0.0``, a LAN address or an interface
  name) refuses to start without CurveZMQ keys: the server's secret key file and a folder of the
  allowed clients' public keys (checked by ``zmq.auth.ThreadAuthenticator``).
* Loopback is reachable by every user of the machine; on a shared machine use keys there too, or an
  ``ipc://`` endpoint (its socket file is made owner-only).
* Abstract ``ipc://@name`` sockets (Linux) have no file and no permissions: every local user can
  connect. They are refused without CurveZMQ keys, like a network bind.
* Refused CurveZMQ clients are logged (address, key, reason), at most 10 lines per 10 s.
* Nothing from the wire is unpickled: messages are msgpack with no ext types (see protocol.py).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

from ffavatar.errors import InvalidInput

log = logging.getLogger(__name__)


class InsecureBind(InvalidInput):
    """A network-reachable bind without CurveZMQ keys."""


def endpoint_host(endpoint: str) -> tuple[str, str]:
    """``tcp://host:port`` → (transport, host); other transports → (transport, rest)."""
    if "://" not in endpoint:
        raise InvalidInput(f"bad endpoint {endpoint!r}; use tcp://127.0.0.1:5557 or ipc:///path")
    transport, rest = endpoint.split("://", 1)
    if transport != "tcp":
        return transport, rest
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    if ";" in host:  # tcp://source;dest form: the local address is the part after ';'
        host = host.split(";")[-1]
    return transport, host.strip("[]")


def is_loopback(endpoint: str) -> bool:
    """True for tcp on 127.0.0.0/8, ::1 or localhost, for ipc:// socket files (local, made owner-only)
    and inproc://. False for abstract ``ipc://@name`` sockets: any local user can reach them."""
    transport, host = endpoint_host(endpoint)
    if transport == "ipc" and host.startswith("@"):
        return False
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a host name: reachable from outside as far as we know


@dataclass
class CurveServerKeys:
    """Server key pair (from its secret key file) and the folder of allowed client public keys."""

    public: bytes
    secret: bytes
    clients_dir: Path

    @classmethod
    def load(cls, secret_file: str | Path, clients_dir: str | Path) -> CurveServerKeys:
        secret_file, clients_dir = Path(secret_file), Path(clients_dir)
        try:
            public, secret = zmq.auth.load_certificate(secret_file)
        except (OSError, ValueError) as e:
            raise InvalidInput(f"cannot read the server secret key {secret_file}: {e}",
                               hint="create keys with: python -m ffavatar_backend keys DIR") from None
        if not secret:
            raise InvalidInput(f"{secret_file} holds no secret key (use the .key_secret file, not the .key one)")
        if not clients_dir.is_dir() or not any(clients_dir.glob("*.key")):
            raise InvalidInput(f"no client public keys (*.key) in {clients_dir}",
                               hint="copy each allowed client's .key file there")
        return cls(public, secret, clients_dir)


def check_bind(endpoint: str, keys: CurveServerKeys | None) -> None:
    """Refuse a network-reachable bind without keys (raises :class:`InsecureBind`)."""
    if endpoint.startswith("ipc://@") and keys is None:
        raise InsecureBind(
            f"refusing to listen on the abstract socket {endpoint} without client authentication: it has no "
            "file permissions, so every user of this machine could connect",
            hint="use an ipc:///path socket file (made owner-only) or tcp://127.0.0.1:PORT, or pass "
                 "--curve-secret and --curve-clients")
    if not is_loopback(endpoint) and keys is None:
        raise InsecureBind(
            f"refusing to listen on {endpoint} without encryption and client authentication",
            hint="bind tcp://127.0.0.1:PORT, or pass --curve-secret SERVER.key_secret --curve-clients DIR "
                 "(create keys with: python -m ffavatar_backend keys DIR)")


class RateLimitedLog:
    """At most ``burst`` warnings per ``window`` seconds; the rest are counted and summed up later."""

    def __init__(self, logger: logging.Logger, burst: int = 10, window: float = 10.0):
        self.logger, self.burst, self.window = logger, burst, window
        self._lock = threading.Lock()
        self._start, self._count, self._hidden = 0.0, 0, 0

    def warning(self, msg: str, *args) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._start > self.window:
                self._summary()
                self._start, self._count = now, 0
            self._count += 1
            if self._count > self.burst:
                self._hidden += 1
                return
        self.logger.warning(msg, *args)

    def flush(self, force: bool = False) -> None:
        """Log the count of hidden lines once their window is over (or now, with ``force``)."""
        if self._hidden and (force or time.monotonic() - self._start > self.window):
            with self._lock:
                self._summary()

    def _summary(self) -> None:
        if self._hidden:
            self.logger.warning("... and %d more like it within %.0f s", self._hidden, self.window)
            self._hidden = 0


class LoggingAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP authenticator, logging every refused client (pyzmq logs refusals at debug only)."""

    def __init__(self, *args, refusals: RateLimitedLog, **kwargs):
        super().__init__(*args, **kwargs)
        self.refusals = refusals
        self._peer = ("?", "?")

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) >= 6:
            address = msg[3].decode("utf8", "replace")
            key = zmq.utils.z85.encode(msg[6]).decode() if msg[5] == b"CURVE" and len(msg) > 6 and len(msg[6]) == 32 \
                else msg[5].decode("utf8", "replace")
            self._peer = (address, key)
        await super().handle_zap_message(msg)

    def _send_zap_reply(self, request_id, status_code, status_text, user_id="anonymous"):
        if status_code != b"200":
            self.refusals.warning("refused a CurveZMQ client from %s (key %s): %s", self._peer[0], self._peer[1],
                                  status_text.decode("utf8", "replace"))
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


HANDSHAKE_FAILURES = {"EVENT_HANDSHAKE_FAILED_NO_DETAIL": "no detail", "EVENT_HANDSHAKE_FAILED_PROTOCOL":
                      "protocol mismatch (a client without CurveZMQ keys, or not a ZeroMQ client)"}
"""Handshake failures that never reach the authenticator (its refusals are logged there)."""


def handshake_monitor(sock: zmq.Socket) -> zmq.Socket:
    """A monitor socket reporting ``sock``'s failed handshakes (read with :func:`log_handshake_event`)."""
    events = 0
    for name in HANDSHAKE_FAILURES:
        events |= getattr(zmq, name, 0)
    return sock.get_monitor_socket(events)


def log_handshake_event(monitor: zmq.Socket, refusals: RateLimitedLog) -> None:
    from zmq.utils.monitor import recv_monitor_message

    try:
        ev = recv_monitor_message(monitor, zmq.NOBLOCK)
    except zmq.Again:
        return
    name = next((n for n in HANDSHAKE_FAILURES if getattr(zmq, n, None) == ev["event"]), str(ev["event"]))
    refusals.warning("a connection to %s failed the CurveZMQ handshake: %s",
                     ev.get("endpoint", b"").decode("utf8", "replace") if isinstance(ev.get("endpoint"), bytes)
                     else ev.get("endpoint"), HANDSHAKE_FAILURES.get(name, name))


def secure_socket(ctx: zmq.Context, sock: zmq.Socket, keys: CurveServerKeys | None,
                  refusals: RateLimitedLog | None = None) -> ThreadAuthenticator | None:
    """Make ``sock`` a CurveZMQ server that admits only the clients in ``keys.clients_dir`` (before bind)."""
    if keys is None:
        return None
    refusals = refusals or RateLimitedLog(log)
    auth = LoggingAuthenticator(ctx, log=logging.getLogger("ffavatar_backend.auth"), refusals=refusals)
    auth.start()
    auth.configure_curve(domain="*", location=str(keys.clients_dir))
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
    log.info("CurveZMQ on: %d allowed client key(s) in %s", len(list(keys.clients_dir.glob("*.key"))),
             keys.clients_dir)
    return auth


def protect_ipc(endpoint: str) -> None:
    """Make an ipc:// socket file owner-only (after bind)."""
    transport, path = endpoint_host(endpoint)
    if transport == "ipc" and path and not path.startswith("@") and os.path.exists(path):
        os.chmod(path, 0o600)


def generate_keys(folder: str | Path, names: tuple[str, ...] = ("server", "client")) -> dict[str, tuple[Path, Path]]:
    """Create CurveZMQ key pairs ``NAME.key`` (public) + ``NAME.key_secret`` (0600) in ``folder``,
    and a ``clients/`` folder holding the public keys of every non-server pair (ready for --curve-clients)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    clients = folder / "clients"
    clients.mkdir(exist_ok=True, mode=0o700)
    out = {}
    for name in names:
        if (folder / f"{name}.key_secret").exists():
            raise InvalidInput(f"{folder / name}.key_secret already exists; refusing to overwrite a key")
        public, secret = zmq.auth.create_certificates(str(folder), name)
        os.chmod(secret, 0o600)
        if name != "server":
            shutil.copy(public, clients / Path(public).name)
        out[name] = (Path(public), Path(secret))
    return out
