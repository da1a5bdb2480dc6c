"""The avatar store: one ``<id>.ffa`` file per avatar and a ``<id>.json`` sidecar with its metadata.
The files are the truth; ``index.json`` is a cache of the sidecars for people and tools, rebuilt
from them every time the store opens and written on a best-effort basis.

Writing an avatar (create or replace), so that a kill at any instant leaves the old avatar or the
new one, each with its own metadata, never a mix:

1. ``save`` writes the avatar to a temp file in the store folder; it is fsynced and hashed (sha256);
2. the new metadata, with that hash, goes to ``<id>.next.json`` (atomically: temp, fsync, rename);
3. the temp file is renamed over ``<id>.ffa``: **the commit point**;
4. ``<id>.next.json`` is renamed over ``<id>.json``; then the index is rewritten (a failure here is
   logged, not reported: the avatar is stored, and the next start repairs the rest).

On open: temp files are removed; a ``<id>.next.json`` whose hash matches ``<id>.ffa`` is promoted
(the kill came after step 3), any other one is dropped; sidecars without an ``.ffa`` are removed;
an ``.ffa`` without a readable sidecar gets a minimal entry. Deleting removes the ``.ffa`` first
(its commit point), then the sidecar. Out-of-space and similar failures raise
:class:`~ffavatar.errors.StorageError` (code ``storage``) and leave the store as it was.
Ids are generated here (16 hex chars) and checked against a strict regex before any path is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ffavatar.errors import InvalidInput, NotFound, from_os_error

log = logging.getLogger(__name__)

AVATAR_ID_RE = re.compile(r"[0-9a-f]{16}")
INDEX = "index.json"
SUFFIX = ".ffa"
NEXT = ".next.json"
TMP_PREFIX = ".tmp-"
INDEX_VERSION = 1


def default_store_dir() -> Path:
    """``$FFAVATAR_STORE``, else ``$XDG_DATA_HOME/ffavatar/avatars`` (``~/.local/share/...``)."""
    env = os.environ.get("FFAVATAR_STORE")
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "ffavatar" / "avatars"


def check_id(avatar_id: Any) -> str:
    """The id if it is a well-formed avatar id, else :class:`InvalidInput` (nothing path-like gets through)."""
    if not isinstance(avatar_id, str) or not AVATAR_ID_RE.fullmatch(avatar_id):
        raise InvalidInput(f"invalid avatar id {str(avatar_id)[:40]!r}: ids are 16 lower-case hex characters "
                           "given out by the server (see list_avatars)")
    return avatar_id


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class AvatarStore:
    """Thread-safe store of avatars under ``root`` (created 0700: avatars are personal data)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise from_os_error(e, f"the avatar store {self.root}") from None
        self._lock = threading.RLock()
        self._entries: dict[str, dict[str, Any]] = {}
        self.repaired: list[str] = []  # what opening had to fix (logged too)
        self._recover()
        self._write_index()

    # ------------------------------------------------------------------------------ paths
    def _file(self, avatar_id: str) -> Path:
        return self.root / f"{check_id(avatar_id)}{SUFFIX}"

    def _sidecar(self, avatar_id: str) -> Path:
        return self.root / f"{check_id(avatar_id)}.json"

    def _next(self, avatar_id: str) -> Path:
        return self.root / f"{check_id(avatar_id)}{NEXT}"

    def _temp(self, suffix: str) -> Path:
        return self.root / f"{TMP_PREFIX}{secrets.token_hex(6)}{suffix}"

    def _repair(self, message: str) -> None:
        log.warning("avatar store %s: %s", self.root, message)
        self.repaired.append(message)

    # ------------------------------------------------------------------------------ startup
    def _recover(self) -> None:
        for p in [*self.root.glob(f"{TMP_PREFIX}*"), *self.root.glob(".*.tmp")]:
            self._repair(f"removed {p.name}, left by an interrupted write")
            p.unlink(missing_ok=True)
        for p in self.root.glob(f"*{NEXT}"):  # metadata of a write that may or may not have committed
            avatar_id = p.name[: -len(NEXT)]
            if not AVATAR_ID_RE.fullmatch(avatar_id):
                continue
            ffa = self.root / f"{avatar_id}{SUFFIX}"
            meta = self._read_json(p)
            if meta is not None and ffa.exists() and meta.get("sha256") == sha256_file(ffa):
                os.replace(p, self._sidecar(avatar_id))
                self._repair(f"avatar {avatar_id}: finished a write interrupted after its commit")
            else:
                p.unlink(missing_ok=True)
                self._repair(f"avatar {avatar_id}: dropped the metadata of a write that never committed")
        files = {p.stem for p in self.root.glob(f"*{SUFFIX}") if AVATAR_ID_RE.fullmatch(p.stem)}
        for p in self.root.glob("*.json"):  # sidecars whose avatar never committed, or was deleted
            if AVATAR_ID_RE.fullmatch(p.stem) and p.stem not in files:
                self._repair(f"removed orphan metadata {p.name}")
                p.unlink(missing_ok=True)
        cached = self._read_index()
        for avatar_id in sorted(files):
            meta = self._read_json(self._sidecar(avatar_id))
            if meta is None or meta.get("id") != avatar_id:
                st = self._file(avatar_id).stat()
                meta = {"id": avatar_id, "name": "", "created": st.st_mtime, "updated": st.st_mtime}
                self._repair(f"avatar {avatar_id}: metadata missing or unreadable; listed with what its file tells")
            self._entries[avatar_id] = meta
        if cached != self._entries and (cached or self._entries):
            self._repair("index.json did not match the avatar files; rebuilt it from them")

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def _read_index(self) -> dict[str, Any] | None:
        doc = self._read_json(self.root / INDEX)
        if doc is None or doc.get("version") != INDEX_VERSION or not isinstance(doc.get("avatars"), dict):
            return None
        return doc["avatars"]

    # ------------------------------------------------------------------------------ writes
    def _write_atomic(self, final: Path, write: Callable[[Path], None]) -> None:
        tmp = self._temp(final.suffix)
        try:
            write(tmp)
            os.chmod(tmp, 0o600)
            fsync_file(tmp)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.root)

    def _write_json(self, final: Path, doc: dict[str, Any]) -> None:
        self._write_atomic(final, lambda p: p.write_text(json.dumps(doc, indent=1, sort_keys=True)))

    def _write_index(self) -> bool:
        """Best effort: the index is a cache of the sidecars (rebuilt on open); False when it failed."""
        try:
            self._write_json(self.root / INDEX, {"version": INDEX_VERSION, "avatars": self._entries})
            return True
        except OSError as e:
            log.warning("could not update %s (%s); the avatars are stored, the index is rebuilt on the next start",
                        self.root / INDEX, e)
            return False

    def _commit(self, avatar_id: str, save: Callable[[Path], None], entry: dict[str, Any]) -> dict[str, Any]:
        """Steps 1–4 of the module docstring. Before the commit point every failure leaves the store
        as it was (OSError → StorageError); after it nothing is reported as a failure."""
        tmp, nxt = self._temp(SUFFIX), self._next(avatar_id)
        try:
            save(tmp)
            os.chmod(tmp, 0o600)
            fsync_file(tmp)
            entry = {**entry, "sha256": sha256_file(tmp), "bytes": tmp.stat().st_size}
            self._write_json(nxt, entry)
            os.replace(tmp, self._file(avatar_id))  # the commit point
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            nxt.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise from_os_error(e, f"avatar {avatar_id} in the store {self.root}") from None
            raise
        self._entries[avatar_id] = entry
        try:
            fsync_dir(self.root)
            os.replace(nxt, self._sidecar(avatar_id))
            fsync_dir(self.root)
        except OSError as e:
            log.warning("avatar %s is stored; its metadata is finished on the next start (%s)", avatar_id, e)
        self._write_index()
        return dict(entry)

    def create(self, save: Callable[[Path], None], **meta: Any) -> dict[str, Any]:
        """Store a new avatar: ``save(path)`` writes the .ffa to a temp path. Returns its entry."""
        with self._lock:
            avatar_id = secrets.token_hex(8)
            while avatar_id in self._entries or self._file(avatar_id).exists():
                avatar_id = secrets.token_hex(8)
            now = time.time()
            entry = self._commit(avatar_id, save, {**meta, "id": avatar_id, "created": now, "updated": now})
            log.info("stored avatar %s (%s)", avatar_id, meta.get("name") or "unnamed")
            return entry

    def replace(self, avatar_id: str, save: Callable[[Path], None], **meta: Any) -> dict[str, Any]:
        """Atomically replace an avatar's file and merge ``meta`` into its entry."""
        with self._lock:
            old = self.get(avatar_id)
            return self._commit(avatar_id, save, {**old, **meta, "id": avatar_id, "updated": time.time()})

    def delete(self, avatar_id: str) -> None:
        """Remove an avatar: its .ffa first (the commit point), then its metadata."""
        with self._lock:
            self.get(avatar_id)
            try:
                self._file(avatar_id).unlink()
                fsync_dir(self.root)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise from_os_error(e, f"avatar {avatar_id} in the store {self.root}") from None
            self._entries.pop(avatar_id, None)
            for p in (self._sidecar(avatar_id), self._next(avatar_id)):
                try:
                    p.unlink(missing_ok=True)
                except OSError as e:  # an orphan sidecar is removed on the next start
                    log.warning("avatar %s is deleted; could not remove %s (%s)", avatar_id, p.name, e)
            self._write_index()
            log.info("deleted avatar %s", avatar_id)

    # ------------------------------------------------------------------------------ reads
    def get(self, avatar_id: str) -> dict[str, Any]:
        """The avatar's entry; :class:`NotFound` for an unknown id."""
        check_id(avatar_id)
        with self._lock:
            entry = self._entries.get(avatar_id)
            if entry is None or not self._file(avatar_id).exists():
                raise NotFound(f"no avatar {avatar_id} in the store", hint="list_avatars shows the stored ones")
            return dict(entry)

    def path(self, avatar_id: str) -> Path:
        """Path of an existing avatar's .ffa file."""
        self.get(avatar_id)
        return self._file(avatar_id)

    def version(self, avatar_id: str) -> float:
        """Changes whenever the avatar's file is replaced (for caches)."""
        return self.get(avatar_id)["updated"]

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            out = []
            for avatar_id, entry in self._entries.items():
                try:
                    size = self._file(avatar_id).stat().st_size
                except OSError:
                    continue
                out.append({**entry, "bytes": size})
        return sorted(out, key=lambda e: (e.get("created", 0), e["id"]))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, avatar_id: object) -> bool:
        with self._lock:
            return isinstance(avatar_id, str) and avatar_id in self._entries

