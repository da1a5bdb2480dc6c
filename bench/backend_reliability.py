"""Re-measure the backend's reliability numbers (issue 14) on real server processes over loopback:

* fuzz: malformed messages (ten kinds: random bytes, wrong types, huge declared sizes, ext types,
  bad envelopes, truncated and multi-frame messages) — each must get exactly one error reply with
  the right id, and the server's memory must stay flat;
* kills: ``kill -9`` of the server while jobs run, then a fast restart on the same address — every
  avatar whose ``reconstruct`` result the client received must survive, every job in flight must end
  (``disconnected``) instead of hanging, and the store must hold no leftovers;
* clients: concurrent clients that all use the *same* request ids, mixing pings, reconstructions
  and animations — no errors, no events of one client's job reaching another;
* rogue CurveZMQ connections: unknown keys and key-less clients against a CurveZMQ server — all
  refused and logged (rate-limited), the server keeps serving its allowed client;
* memory under the hostile inputs (default limits): image bombs in every accepted format,
  referencing "videos", oversized camera renders, frames streamed into a queued job and queued
  uploads until the byte budgets refuse them; peak RSS (VmHWM) above the idle server.

    .venv/bin/python bench/backend_reliability.py                 # full run, ~3 min on 2 CPU cores
    .venv/bin/python bench/backend_reliability.py --quick         # smaller counts
Results: ``bench/results/backend-reliability-cpu.json`` (and printed).
"""

from __future__ import annotations

import argparse
import logging
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import msgpack
import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # the fuzz generator and the hostile-input makers are the tests' own
from common import write_result  # noqa: E402
from test_backend_hostile import REFERENCING, bmp_rle8, jpeg_sof_after_64k, png_header_only, tiff_huge_tile  # noqa: E402
from test_backend_server import fuzz_messages  # noqa: E402

from ffavatar_backend import protocol as P  # noqa: E402
from ffavatar_backend.client import BackendError, Client, CurveKeys  # noqa: E402
from ffavatar_backend.launcher import ServerProcess  # noqa: E402

log = logging.getLogger("bench.reliability")
SYN = ["--engine", "synthetic", "--log-level", "ERROR"]
MiB = 2**20


def png(seed: int = 0, size: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    return cv2.imencode(".png", rng.integers(0, 255, (size, size, 3), np.uint8))[1].tobytes()


def status_value(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(key)


# ------------------------------------------------------------------------------------ fuzz
def fuzz(n: int, store: str) -> dict:
    with ServerProcess([*SYN, "--store", store]) as srv:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(srv.endpoint)
        rss0 = srv.rss_bytes()
        replies = mixups = missing = 0
        msgs = list(fuzz_messages(n, seed=14))
        t0 = time.perf_counter()
        for start in range(0, n, 500):
            batch = msgs[start:start + 500]
            for frames, _ in batch:
                sock.send_multipart(frames)
            for _frames, expected in batch:
                if not sock.poll(10_000):
                    missing += 1
                    continue
                reply = msgpack.unpackb(sock.recv(), raw=False)
                replies += 1
                mixups += reply.get("id") != expected or reply.get("event") != "error"
        seconds = time.perf_counter() - t0
        sock.close()
        with Client(srv.endpoint, timeout=5) as c:
            alive = c.ping() < 1.0
        return {"messages": n, "error_replies": replies, "wrong_or_missing": mixups + missing,
                "server_alive": alive, "rss_growth_mib": round((srv.rss_bytes() - rss0) / MiB, 1),
                "messages_per_s": round(n / seconds)}


# ------------------------------------------------------------------------------------ kills
def kills(n: int, store: str) -> dict:
    rng = random.Random(14)
    srv = ServerProcess([*SYN, "--store", store])
    endpoint = srv.endpoint
    acknowledged: set[str] = set()
    in_flight_ended = in_flight_hung = restarts_noticed = 0
    try:
        for k in range(n):
            c = Client(endpoint, timeout=1.0, ping_timeout=2.0)
            c.hello()
            pending: list[str] = []
            seed, acked_now = 0, 0
            settle = time.monotonic() + 30
            deadline = None
            while deadline is None or time.monotonic() < deadline:  # pipelined reconstructions, 3 in flight
                while len(pending) < 3:
                    seed += 1
                    pending.append(c.submit("reconstruct", images=[png(seed)], crop="none", name=f"k{k}-{seed}"))
                for ev in c.poll(0.005):
                    if ev["event"] == "result" and ev["id"] in pending:
                        acknowledged.add(ev["avatar"])
                        acked_now += 1
                    if ev["event"] in ("result", "error") and ev["id"] in pending:
                        pending.remove(ev["id"])
                if deadline is None and (acked_now >= 3 or time.monotonic() > settle):
                    deadline = time.monotonic() + rng.uniform(0.0, 0.3)  # then kill at a random moment
            stream = c.submit("animate", avatar=next(iter(acknowledged)), stream=True, size=16) if acknowledged else None
            srv.kill()  # SIGKILL with jobs in flight
            srv = ServerProcess([*SYN, "--store", store, "--bind", endpoint])  # fast restart, same address
            waiting = set(pending) | ({stream} if stream else set())
            end = time.monotonic() + 15
            while waiting and time.monotonic() < end:
                try:
                    c.ping(timeout=2.0)  # what a client does after silence: this reveals the new instance
                except BackendError:
                    pass
                for ev in c.poll(0.05):
                    if ev["event"] == "result" and ev["id"] in pending:
                        acknowledged.add(ev["avatar"])
                    if ev["event"] in ("result", "error") and ev["id"] in waiting:
                        waiting.discard(ev["id"])
                        in_flight_ended += 1
                        restarts_noticed += ev.get("code") == "disconnected" and "restarted" in ev.get("message", "")
            in_flight_hung += len(waiting)
            c.close()
        with Client(endpoint, timeout=10) as c:
            listed = {a["id"] for a in c.list_avatars()}
            loadable = sum(1 for a in acknowledged & listed if c.export_ply(a).startswith(b"ply\n"))
        leftovers = [p.name for p in Path(store).iterdir() if p.name.startswith(".") or p.name.endswith(".next.json")]
    finally:
        srv.stop()
    return {"kills": n, "acknowledged_avatars": len(acknowledged), "lost": len(acknowledged - listed),
            "loadable_after_restarts": loadable, "in_flight_jobs_ended": in_flight_ended,
            "ended_as_restarted": restarts_noticed, "in_flight_jobs_hung": in_flight_hung,
            "leftover_files": len(leftovers)}


# ------------------------------------------------------------------------------------ clients
def clients(n: int, store: str, rounds: int = 6) -> dict:
    errors: list[str] = []
    mixups = [0]
    with ServerProcess([*SYN, "--store", store]) as srv:
        with Client(srv.endpoint, timeout=20) as c:
            avatar = c.reconstruct([png()], crop="none")["avatar"]

        def run(k: int) -> None:
            try:
                with Client(srv.endpoint, timeout=30) as c:
                    for r in range(rounds):
                        c.ping(timeout=10)
                        rid = f"same-{r}"  # every client uses the same ids
                        if k % 2:
                            c.submit("reconstruct", request_id=rid, images=[png(k)], crop="none", name=f"c{k}")
                            final = [e for e in c.events(rid)][-1]
                            mixups[0] += c.list_avatars() and final.get("name") != f"c{k}"
                        else:
                            c.submit("animate", request_id=rid, avatar=avatar, frames=[png(k)] * (8 + k), size=16,
                                     format="raw")
                            evs = list(c.events(rid))
                            frames = [e["index"] for e in evs if e["event"] == "frame"]
                            mixups[0] += frames != list(range(8 + k)) or evs[-1]["frames"] != 8 + k
            except BaseException as e:  # noqa: BLE001 - counted
                errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    return {"clients": n, "jobs": n * rounds, "errors": len(errors), "mixups": mixups[0], "first_error": errors[:1]}


# ------------------------------------------------------------------------------------ rogue CurveZMQ
def rogue(n: int, tmp: Path) -> dict:
    keys = tmp / "keys"
    subprocess.run([sys.executable, "-m", "ffavatar_backend", "keys", str(keys)], check=True, capture_output=True)
    log_path = tmp / "curve.log"
    args = [*SYN[:2], "--log-level", "WARNING", "--store", str(tmp / "curve-store"), "--curve-secret",
            str(keys / "server.key_secret"), "--curve-clients", str(keys / "clients")]
    good = CurveKeys.from_files(keys / "server.key", keys / "client.key_secret")
    ctx = zmq.Context.instance()
    with open(log_path, "w") as fh, ServerProcess(args, stderr=fh) as srv:
        socks = []
        for i in range(n):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            if i % 2 == 0:  # unknown key
                pub, sec = zmq.curve_keypair()
                s.curve_serverkey, s.curve_publickey, s.curve_secretkey = good.server_public, pub, sec
            s.connect(srv.endpoint)
            s.send(P.encode(P.make_request("ping", f"r{i}")))
            socks.append(s)
        answered = sum(1 for s in socks if s.poll(50))
        for s in socks:
            s.close()
        with Client(srv.endpoint, timeout=10, curve=good) as c:
            ok = c.ping() < 1.0 and c.hello()["curve"] is True
        alive = srv.alive()
    import re

    text = log_path.read_text()
    hidden = sum(int(m) for m in re.findall(r"\.\.\. and (\d+) more like it", text))
    lines = text.count("refused a CurveZMQ client") + text.count("failed the CurveZMQ handshake")
    return {"rogue_connections": n, "answered": answered, "allowed_client_served": ok, "server_alive": alive,
            "refused_key_lines": text.count("refused a CurveZMQ client"),
            "failed_handshake_lines": text.count("failed the CurveZMQ handshake"),
            "refusals_logged_in_all": lines + hidden, "log_lines": len(text.splitlines())}


# ------------------------------------------------------------------------------------ memory
def memory(store: str, tmp: Path) -> dict:
    from ffavatar.images import write_video

    take = tmp / "some" / "other" / "take.mp4"
    take.parent.mkdir(parents=True, exist_ok=True)
    write_video(take, [np.full((64, 64, 3), 40 * i, np.uint8) for i in range(4)], fps=10)
    import os

    srv = ServerProcess([*SYN, "--store", store, "--stream-idle-timeout", "900"],  # streams wait out a slow machine
                        env={**os.environ, "TMPDIR": str(tmp)})
    refused: dict[str, str] = {}
    try:
        c = Client(srv.endpoint, timeout=30)
        c.hello()
        avatar = c.reconstruct([png()], crop="none")["avatar"]
        list(c.animate(avatar, frames=[png()] * 4, size=64))
        base = srv.rss_bytes()
        hwm0 = status_value(srv.pid, "VmHWM")
        bombs = {"bmp_rle8_20000": bmp_rle8(20000, 20000), "png_50000": png_header_only(50000, 50000),
                 "jpeg_20000_sof_after_64k": jpeg_sof_after_64k(20000, 20000), "tiff_tile_15008": tiff_huge_tile()}
        for name, data in bombs.items():
            try:
                c.reconstruct([data], crop="none")
            except BackendError as e:
                refused[name] = e.code
        for name, data in REFERENCING.items():
            try:
                list(c.animate(avatar, video=data, size=32))
            except BackendError as e:
                refused[f"video_{name}"] = e.code
        cam = {"matrix_world": np.eye(4).tolist(), "lens": 50.0, "resolution_x": 4608, "resolution_y": 4608}
        try:
            list(c.animate(avatar, frames=[png()], cameras=cam))
        except BackendError as e:
            refused["camera_4608"] = e.code
        files_peak = status_value(srv.pid, "VmHWM")
        # a running stream keeps the worker busy; a second stream waits in the queue and is flooded
        blocker = c.submit("animate", avatar=avatar, stream=True, size=16, format="raw")
        c.send_chunk(blocker, [png()])
        flood = Client(srv.endpoint, timeout=30)
        flood.hello()
        queued = flood.submit("animate", avatar=avatar, stream=True, size=16)
        blob = np.random.default_rng(0).bytes(4 * MiB)
        chunk_ids = [flood.submit("animate_chunk", job=queued, frames=[blob]) for _ in range(64)]  # 256 MiB
        busy_chunks = 0
        end = time.monotonic() + 60
        seen: set[str] = set()
        while time.monotonic() < end and len(seen) < len(chunk_ids) - 16:
            for ev in flood.poll(0.2):
                if ev["id"] in chunk_ids and ev["event"] == "error":
                    seen.add(ev["id"])
                    busy_chunks += ev["code"] == "busy"
        uploads_busy = 0
        big = np.random.default_rng(1).bytes(200 * MiB)
        for _ in range(4):  # 800 MiB of queued uploads from one connection
            rid = flood.submit("reconstruct", images=[big], crop="none")
            while True:
                evs = [e for e in flood.poll(5.0) if e["id"] == rid]
                if evs:
                    uploads_busy += evs[0]["event"] == "error" and evs[0]["code"] == "busy"  # else acknowledged: queued
                    break
        held = flood.status()["input_bytes"]
        peak = status_value(srv.pid, "VmHWM")
        flood.close()
        c.cancel(blocker)
        c.close()
    finally:
        srv.stop()
    return {"refused": refused, "stream_chunks_refused_busy": busy_chunks, "uploads_refused_busy": uploads_busy,
            "input_bytes_held_by_flooding_client_mib": round(held / MiB, 1),
            "rss_idle_mib": round(base / MiB, 1),
            "peak_growth_hostile_files_mib": round((files_peak - max(base, hwm0)) / MiB, 1),
            "peak_growth_budget_flood_mib": round((peak - max(base, hwm0)) / MiB, 1),
            "peak_rss_mib": round(peak / MiB, 1),
            "budgets_mib": {"per_stream": P.Limits().max_stream_bytes // MiB,
                            "per_client": P.Limits().max_client_bytes // MiB,
                            "total": P.Limits().max_total_bytes // MiB}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fuzz", type=int, default=30_000)
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rogue", type=int, default=180)
    ap.add_argument("--quick", action="store_true", help="fuzz 5,000, kills 8, rogue 40")
    ap.add_argument("--only", choices=["fuzz", "kills", "clients", "rogue_curve", "memory"], action="append",
                    help="run only these sections (repeatable)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.fuzz, args.kills, args.rogue = 5000, 8, 40
    logging.basicConfig(level=logging.INFO)
    out: dict = {"command": "bench/backend_reliability.py" + (" --quick" if args.quick else "")}
    with tempfile.TemporaryDirectory(prefix="ffavatar-rel-") as tmp:
        tmp = Path(tmp)
        for name, fn in (("fuzz", lambda: fuzz(args.fuzz, str(tmp / "fuzz"))),
                         ("kills", lambda: kills(args.kills, str(tmp / "kills"))),
                         ("clients", lambda: clients(args.clients, str(tmp / "clients"))),
                         ("rogue_curve", lambda: rogue(args.rogue, tmp)),
                         ("memory", lambda: memory(str(tmp / "mem-store"), tmp / "mem"))):
            if args.only and name not in args.only:
                continue
            (tmp / "mem").mkdir(exist_ok=True)
            t0 = time.perf_counter()
            out[name] = fn()
            out[name]["seconds"] = round(time.perf_counter() - t0, 1)
            log.info("%s: %s", name, out[name])
    if args.no_write:
        import json

        print(json.dumps(out, indent=2))
    else:
        write_result("backend-reliability", "cpu", out)


if __name__ == "__main__":
    main()
