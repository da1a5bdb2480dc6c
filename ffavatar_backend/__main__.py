"""``python -m ffavatar_backend serve|keys|info``: run the backend, make CurveZMQ keys, query a server."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

log = logging.getLogger("ffavatar_backend")

EPILOG = """\
examples:
  python -m ffavatar_backend serve                         # loopback, port 5557, model on the best device
  python -m ffavatar_backend serve --bind 'tcp://127.0.0.1:*' --device cpu --store /tmp/avatars
  python -m ffavatar_backend keys ~/.config/ffavatar/keys  # server + client key pairs
  python -m ffavatar_backend serve --bind tcp://0.0.0.0:5557 \\
      --curve-secret ~/.config/ffavatar/keys/server.key_secret --curve-clients ~/.config/ffavatar/keys/clients
  python -m ffavatar_backend info --address tcp://127.0.0.1:5557

When listening, the server prints one JSON line on stdout: {"event": "listening", "endpoint": ..., "pid": ...}.
"""


def _parser() -> argparse.ArgumentParser:
    from .protocol import Limits

    d = Limits()
    p = argparse.ArgumentParser(prog="python -m ffavatar_backend", description="FFAvatar backend service "
                                "(ZeroMQ ROUTER + msgpack; see docs/protocol.md).", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the backend", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--bind", default="tcp://127.0.0.1:5557",
                   help="ZeroMQ endpoint (default %(default)s; 'tcp://127.0.0.1:*' picks a free port; a "
                        "non-loopback address needs --curve-secret and --curve-clients)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")
    s.add_argument("--checkpoint", type=Path, help="model checkpoint (default: the bundled/untrained one)")
    s.add_argument("--flame", type=Path, help="FLAME model file (.pkl/.npz; default: $FFAVATAR_FLAME or the demo head)")
    s.add_argument("--store", type=Path, help="avatar folder (default: $FFAVATAR_STORE or "
                                              "~/.local/share/ffavatar/avatars)")
    s.add_argument("--engine", default="model", choices=["model", "synthetic"],
                   help="'synthetic' replaces the model by a cheap stand-in (benchmarks, client tests)")
    s.add_argument("--max-queue", type=int, default=d.max_queue, help="work jobs that may wait (default %(default)s)")
    s.add_argument("--max-message-mb", type=float, default=d.max_message_bytes / 2**20,
                   help="largest accepted message in MiB (default %(default)s); larger ones drop the connection")
    s.add_argument("--max-images", type=int, default=d.max_images, help="portraits per request (default %(default)s)")
    s.add_argument("--max-pixels", type=int, default=d.max_pixels, help="pixels per image (default %(default)s)")
    s.add_argument("--max-frames", type=int, default=d.max_frames,
                   help="driver frames per animate (default %(default)s)")
    s.add_argument("--max-request-pixels", type=int, default=d.max_request_pixels,
                   help="pixels of all portraits of one request together (default %(default)s)")
    s.add_argument("--max-stream-mb", type=float, default=d.max_stream_bytes / 2**20,
                   help="MiB of streamed frames one animate may hold waiting (default %(default)s)")
    s.add_argument("--max-client-mb", type=float, default=d.max_client_bytes / 2**20,
                   help="MiB of input (payloads + streamed frames) one connection's jobs may hold (default %(default)s)")
    s.add_argument("--max-total-mb", type=float, default=d.max_total_bytes / 2**20,
                   help="MiB of input all connections' jobs may hold together (default %(default)s)")
    s.add_argument("--slow-client-timeout", type=float, default=30.0,
                   help="seconds a client may leave its frames unread before its job is stopped (default %(default)s)")
    s.add_argument("--stream-idle-timeout", type=float, default=60.0,
                   help="seconds a streamed animate waits for the next chunk (default %(default)s)")
    s.add_argument("--curve-secret", type=Path, help="server secret key file (NAME.key_secret) for CurveZMQ")
    s.add_argument("--curve-clients", type=Path, help="folder of allowed client public keys (*.key)")
    s.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    k = sub.add_parser("keys", help="generate CurveZMQ key pairs (server + clients)")
    k.add_argument("dir", type=Path, help="folder to write NAME.key / NAME.key_secret and clients/ into")
    k.add_argument("--client", action="append", default=None, metavar="NAME",
                   help="client key pair name (repeatable; default: one named 'client')")

    i = sub.add_parser("info", help="ask a running server for hello + status and print them as JSON")
    i.add_argument("--address", default="tcp://127.0.0.1:5557")
    i.add_argument("--timeout", type=float, default=5.0)
    return p


def _serve(args: argparse.Namespace) -> int:
    from ffavatar.errors import FFAvatarError

    from .engine import EngineHost, ModelEngine
    from .protocol import Limits
    from .security import CurveServerKeys
    from .server import Server, ServerConfig
    from .store import AvatarStore, default_store_dir

    try:
        if (args.curve_secret is None) != (args.curve_clients is None):
            raise FFAvatarError("--curve-secret and --curve-clients go together")
        curve = CurveServerKeys.load(args.curve_secret, args.curve_clients) if args.curve_secret else None
        limits = Limits(max_message_bytes=int(args.max_message_mb * 2**20), max_images=args.max_images,
                        max_pixels=args.max_pixels, max_frames=args.max_frames, max_queue=args.max_queue,
                        max_request_pixels=args.max_request_pixels, max_stream_bytes=int(args.max_stream_mb * 2**20),
                        max_client_bytes=int(args.max_client_mb * 2**20),
                        max_total_bytes=int(args.max_total_mb * 2**20))
        store = AvatarStore(args.store or default_store_dir())
        if args.engine == "synthetic":
            from .synthetic import SyntheticEngine
            factory = SyntheticEngine
        else:
            def factory():
                return ModelEngine(args.checkpoint, args.device, args.flame)
        config = ServerConfig(bind=args.bind, limits=limits, curve=curve, slow_client_timeout=args.slow_client_timeout,
                              stream_idle_timeout=args.stream_idle_timeout)
        server = Server(config, EngineHost(factory), store)
        endpoint = server.bind()
    except (FFAvatarError, OSError) as e:
        log.error("cannot start: %s", e)
        return 2
    server.host.start()  # the model loads in the background; hello answers meanwhile
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    log.info("avatar store: %s (%d avatars)", store.root, len(store))
    print(json.dumps({"event": "listening", "endpoint": endpoint, "pid": os.getpid(),
                      "store": str(store.root)}), flush=True)
    server.serve()
    return 0


def _keys(args: argparse.Namespace) -> int:
    from ffavatar.errors import FFAvatarError

    from .security import generate_keys

    names = ("server", *(args.client or ["client"]))
    try:
        made = generate_keys(args.dir, names)
    except (FFAvatarError, OSError) as e:
        log.error("%s", e)
        return 2
    for name, (public, secret) in made.items():
        print(f"{name}: public {public}  secret {secret}")
    print(f"serve with: --curve-secret {made['server'][1]} --curve-clients {args.dir / 'clients'}")
    print("give each client its NAME.key_secret and the server's server.key (public)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .client import BackendError, Client

    try:
        with Client(args.address, timeout=args.timeout) as c:
            print(json.dumps({"hello": c.hello(), "status": c.status()}, indent=2))
    except BackendError as e:
        log.error("%s", e)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return {"serve": _serve, "keys": _keys, "info": _info}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
