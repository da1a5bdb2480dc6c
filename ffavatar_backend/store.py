"""The avatar store: one ``<id>.ffa`` file per avatar, a ``<id>.json`` sidecar with its metadata,
and ``index.json`` (a cache of the sidecars, rebuilt from the files when missing or corrupt).

Every write is atomic: temp file in the store folder → fsync → rename → fsync the folder, so a
process killed at any point leaves either the old avatar or the new one, never half of one. The
``.ffa`` rename is the commit point; temp files left by a killed process are removed on open.
Ids are generated here (16 hex chars) and checked against a strict regex before any path is built.
"""

from __future__ import annotations

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

from ffavatar.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

AVATAR_ID_RE = re.compile(r"[0-9a-f]{16}")
INDEX = "index.json"
SUFFIX = ".ffa"
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


class AvatarStore:
    """Thread-safe store of avatars under ``root`` (created 0700: avatars are personal data)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._entries: dict[str, dict[str, Any]] = {}
        self._clean_temp_files()
        self._load_index()

    # ------------------------------------------------------------------------------ paths
    def _file(self, avatar_id: str) -> Path:
        return self.root / f"{check_id(avatar_id)}{SUFFIX}"

    def _sidecar(self, avatar_id: str) -> Path:
        return self.root / f"{check_id(avatar_id)}.json"

    def _temp(self, suffix: str) -> Path:
        return self.root / f"{TMP_PREFIX}{secrets.token_hex(6)}{suffix}"

    # ------------------------------------------------------------------------------ startup
    def _clean_temp_files(self) -> None:
        for p in [*self.root.glob(f"{TMP_PREFIX}*"), *self.root.glob(".*.tmp")]:
            log.warning("removing %s left by an interrupted write", p.name)
            p.unlink(missing_ok=True)
        for p in self.root.glob("*.json"):  # sidecars whose avatar never committed
            stem = p.stem
            if AVATAR_ID_RE.fullmatch(stem) and not (self.root / f"{stem}{SUFFIX}").exists():
                log.warning("removing orphan metadata %s", p.name)
                p.unlink(missing_ok=True)

    def _load_index(self) -> None:
        files = {p.stem for p in self.root.glob(f"*{SUFFIX}") if AVATAR_ID_RE.fullmatch(p.stem)}
        entries: dict[str, dict[str, Any]] = {}
        try:
            doc = json.loads((self.root / INDEX).read_text())
            if doc.get("version") != INDEX_VERSION or not isinstance(doc.get("avatars"), dict):
                raise ValueError("unknown index layout")
            entries = {k: v for k, v in doc["avatars"].items() if k in files and isinstance(v, dict)}
        except FileNotFoundError:
            if files:
                log.warning("index missing in %s; rebuilding it from %d avatar files", self.root, len(files))
        except (ValueError, OSError, AttributeError) as e:
            log.warning("index in %s is unreadable (%s); rebuilding it from the avatar files", self.root, e)
        for avatar_id in files - set(entries):
            entries[avatar_id] = self._entry_from_files(avatar_id)
        self._entries = entries
        self._write_index()

    def _entry_from_files(self, avatar_id: str) -> dict[str, Any]:
        try:
            meta = json.loads(self._sidecar(avatar_id).read_text())
            if isinstance(meta, dict) and meta.get("id") == avatar_id:
                return meta
        except (OSError, ValueError):
            pass
        st = self._file(avatar_id).stat()
        return {"id": avatar_id, "name": "", "created": st.st_mtime, "updated": st.st_mtime}

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

    def _write_index(self) -> None:
        self._write_json(self.root / INDEX, {"version": INDEX_VERSION, "avatars": self._entries})

    def _commit(self, avatar_id: str, save: Callable[[Path], None], entry: dict[str, Any],
                old: dict[str, Any] | None) -> None:
        """Sidecar, then the .ffa (the commit point), then the index. If the .ffa write fails the
        sidecar is put back as it was (a kill in between leaves an orphan sidecar, removed on open)."""
        self._write_json(self._sidecar(avatar_id), entry)
        try:
            self._write_atomic(self._file(avatar_id), save)
        except BaseException:
            if old is None:
                self._sidecar(avatar_id).unlink(missing_ok=True)
            else:
                self._write_json(self._sidecar(avatar_id), old)
            raise
        self._entries[avatar_id] = entry
        self._write_index()

    def create(self, save: Callable[[Path], None], **meta: Any) -> dict[str, Any]:
        """Store a new avatar: ``save(path)`` writes the .ffa to a temp path. Returns its entry."""
        with self._lock:
            avatar_id = secrets.token_hex(8)
            while avatar_id in self._entries:
                avatar_id = secrets.token_hex(8)
            now = time.time()
            entry = {**meta, "id": avatar_id, "created": now, "updated": now}
            self._commit(avatar_id, save, entry, None)
            log.info("stored avatar %s (%s)", avatar_id, meta.get("name") or "unnamed")
            return dict(entry)

    def replace(self, avatar_id: str, save: Callable[[Path], None], **meta: Any) -> dict[str, Any]:
        """Atomically replace an avatar's file and merge ``meta`` into its entry."""
        with self._lock:
            old = self.get(avatar_id)
            entry = {**old, **meta, "id": avatar_id, "updated": time.time()}
            self._commit(avatar_id, save, entry, old)
            return dict(entry)

    def delete(self, avatar_id: str) -> None:
        with self._lock:
            self.get(avatar_id)
            self._entries.pop(avatar_id)
            self._write_index()
            self._file(avatar_id).unlink(missing_ok=True)
            self._sidecar(avatar_id).unlink(missing_ok=True)
            fsync_dir(self.root)
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
