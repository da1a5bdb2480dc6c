"""Who may talk to the backend: loopback by default, CurveZMQ keys for anything else.

* A ``tcp://`` bind on a non-loopback address (``*``, ``0.0.0.0``, a LAN address or an interface
  name) refuses to start without CurveZMQ keys: the server's secret key file and a folder of the
  allowed clients' public keys (checked by ``zmq.auth.ThreadAuthenticator``).
* Loopback is reachable by every user of the machine; on a shared machine use keys there too, or an
  ``ipc://`` endpoint (its socket file is made owner-only).
* Nothing from the wire is unpickled: messages are msgpack with no ext types (see protocol.py).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
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
    """True for tcp on 127.0.0.0/8, ::1 or localhost, and for ipc:// and inproc:// (local by nature)."""
    transport, host = endpoint_host(endpoint)
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
    if not is_loopback(endpoint) and keys is None:
        raise InsecureBind(
            f"refusing to listen on {endpoint} without encryption and client authentication",
            hint="bind tcp://127.0.0.1:PORT, or pass --curve-secret SERVER.key_secret --curve-clients DIR "
                 "(create keys with: python -m ffavatar_backend keys DIR)")


def secure_socket(ctx: zmq.Context, sock: zmq.Socket, keys: CurveServerKeys | None) -> ThreadAuthenticator | None:
    """Make ``sock`` a CurveZMQ server that admits only the clients in ``keys.clients_dir`` (before bind)."""
    if keys is None:
        return None
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("ffavatar_backend.auth"))
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
