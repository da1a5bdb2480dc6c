"""WebDataset-format tar shards of identities, and a streaming few-to-many dataset over them.

Format (plain POSIX/PAX tar, readable by the ``webdataset`` library; no dependency on it here)::

    OUT/shard-000000.tar, shard-000001.tar, ...   ``identities_per_shard`` identities each
    OUT/index.json                                 {"format": "ffavatar-shards", "version": 1, "kind",
                                                    "identities", "images", "shards": [{"name",
                                                    "identities", "images", "bytes"}], ...}

One identity = one WebDataset sample; its key is the identity id with ``.`` replaced by ``_`` (a
WebDataset key ends at the first dot of the basename), made unique within the pack. Members, in order:

* ``KEY.json``: the identity record (``identity.json`` of docs/datasets.md) whose views' ``image`` /
  ``mask`` name the member *suffixes* below;
* ``KEY.<f:06d>_<v:03d>.png|jpg``: the image of frame position f, view position v;
* ``KEY.<f:06d>_<v:03d>.mask.png``: its mask (8-bit grey, 255 = head), when there is one.

Reading never executes anything from a tar: JSON and images only (no pickles), members are read
into memory (never extracted), names that are absolute or contain ``..`` or backslashes, links and
special files are refused, and members / samples above size limits raise :class:`LimitExceeded`.

:class:`ShardDataset` streams identities: shards are shuffled per epoch with the same seed on every
process and split across DDP ranks × DataLoader workers (``split_by="shard"``: whole shards, needs
at least as many shards as readers; ``"identity"``: every reader scans all shards and keeps every
N-th identity), each identity gives few-to-many samples (``sample_few_to_many``, images decoded from
memory), and a buffer of ``shuffle_buffer`` samples shuffles them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import InvalidInput, LimitExceeded, NotFound
from ..images import decode_image, encode_image, to_float, to_uint8
from .folder import CameraRecord, FolderDataset, FrameRecord, IdentityRecord, ViewRecord, check_id
from .nersemble import safe_relpath
from .sampler import IdentitySource, SamplerConfig, sample_few_to_many

log = logging.getLogger(__name__)

SHARD_FORMAT = "ffavatar-shards"
SHARD_VERSION = 1
SHARD_NAME = "shard-{:06d}.tar"
MAX_MEMBER_BYTES = 256 << 20
MAX_SAMPLE_BYTES = 4 << 30
SPLITS = ("shard", "identity")
_SHARD_FILE = re.compile(r"^[A-Za-z0-9_.-]+\.(tar|tar\.gz|tgz)$")


# ---------------------------------------------------------------------------------------- writing
def shard_key(identity: str) -> str:
    """The WebDataset key of an identity: its id with dots replaced (keys end at the first dot)."""
    return identity.replace(".", "_")


def _fit_square(rgb: np.ndarray, mask: np.ndarray | None, camera: CameraRecord | None, size: int,
                fit: str) -> tuple[np.ndarray, np.ndarray | None, CameraRecord | None]:
    """Square ``size`` px image: centre crop (``fit="crop"``) or zero padding (``"pad"``), then
    resize; K follows (principal point shifted by the offset, then both rows scaled)."""
    h, w = rgb.shape[:2]
    s = min(h, w) if fit == "crop" else max(h, w)
    x0, y0 = (w - s) // 2, (h - s) // 2  # negative when padding

    def square(img: np.ndarray) -> np.ndarray:
        if fit == "crop":
            img = img[y0:y0 + s, x0:x0 + s]
        else:
            pads = ((-y0, s - h + y0), (-x0, s - w + x0)) + (((0, 0),) if img.ndim == 3 else ())
            img = np.pad(img, pads)
        interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
        return img if s == size else cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=interp)

    cam = None
    if camera is not None:
        K = np.asarray(camera.K, dtype=np.float64).copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        K[:2] *= size / s
        cam = CameraRecord(K=K.tolist(), viewmat=camera.viewmat, width=size, height=size)
    return square(rgb), None if mask is None else square(mask), cam


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def _identity_members(source: IdentitySource, ident: str, record: IdentityRecord, size: int | None, fit: str,
                      image_format: str) -> tuple[IdentityRecord, list[tuple[str, bytes]]]:
    """The record re-pointed at member suffixes, and (suffix, bytes) of every image and mask."""
    raw = isinstance(source, FolderDataset) and size is None
    members: list[tuple[str, bytes]] = []
    frames = []
    for fi, frame in enumerate(record.frames):
        views = []
        for vi, view in enumerate(frame.views):
            stem = f"{fi:06d}_{vi:03d}"
            camera = view.camera
            if raw:  # copy the folder's PNG/JPEG bytes untouched
                folder = source.root / check_id(ident)
                src = folder / safe_relpath(view.image)
                ext = "jpg" if src.suffix.lower() in (".jpg", ".jpeg") else "png"
                img_bytes = src.read_bytes()
                mask_bytes = (folder / safe_relpath(view.mask)).read_bytes() if view.mask else None
            else:
                rgb, mask = source.load_view(ident, view)
                rgb8, mask8 = to_uint8(rgb), None if mask is None else to_uint8(mask)
                if size is not None:
                    rgb8, mask8, camera = _fit_square(rgb8, mask8, camera, size, fit)
                ext = image_format
                img_bytes = encode_image(rgb8, "jpeg" if ext == "jpg" else "png")
                mask_bytes = None if mask8 is None else encode_image(mask8, "png")
            members.append((f"{stem}.{ext}", img_bytes))
            mask_name = None
            if mask_bytes is not None:
                mask_name = f"{stem}.mask.png"
                members.append((mask_name, mask_bytes))
            views.append(ViewRecord(view=view.view, image=f"{stem}.{ext}", mask=mask_name, camera=camera))
        frames.append(FrameRecord(index=frame.index, views=views, expression=frame.expression, pose=frame.pose))
    out = IdentityRecord(id=record.id, frames=frames, shape=record.shape, appearance_seed=record.appearance_seed)
    return out, members


def pack(source: IdentitySource, out_dir: str | Path, identities_per_shard: int = 64,
         progress: Callable[[int], None] | None = None, *, size: int | None = None, fit: str = "pad",
         image_format: str = "png", identities: Sequence[str] | None = None, overwrite: bool = False) -> list[Path]:
    """Write ``source``'s identities as WebDataset tar shards plus ``index.json``.

    Args:
        source: any identity source (FolderDataset, NeRSembleSource, Ava256Source, ...).
        identities_per_shard: identities per tar.
        progress: called with 1 after each identity (``tqdm.update`` fits).
        size: make every image a ``size`` px square (``fit`` = "pad" with zeros or centre "crop"),
            cameras adjusted; None keeps the images (a FolderDataset's files are then copied byte for byte).
        image_format: "png" or "jpg" for re-encoded images (masks are always PNG).
        identities: pack only these (default: all of the source's).
        overwrite: replace shards/index already in ``out_dir`` (else refuse).
    Returns:
        The shard paths. Identities with fewer than 2 images are skipped (listed in index.json).
    """
    if int(identities_per_shard) < 1:
        raise InvalidInput("identities_per_shard must be >= 1")
    if image_format not in ("png", "jpg"):
        raise InvalidInput(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    if fit not in ("pad", "crop"):
        raise InvalidInput(f"fit must be 'pad' or 'crop', got {fit!r}")
    if size is not None and int(size) < 8:
        raise InvalidInput(f"size must be >= 8 pixels, got {size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob("shard-*.tar")) + ([out / "index.json"] if (out / "index.json").exists() else [])
    if old and not overwrite:
        raise InvalidInput(f"{out} already holds shards", hint="pick an empty folder or pass overwrite=True")
    for p in old:
        p.unlink()
    ids = list(source.identities if identities is None else identities)
    shards: list[dict[str, Any]] = []
    paths: list[Path] = []
    skipped: list[str] = []
    keys: set[str] = set()
    tar: tarfile.TarFile | None = None
    tmp: Path | None = None

    def close() -> None:
        nonlocal tar, tmp
        if tar is not None and tmp is not None:
            tar.close()
            final = tmp.with_suffix("")
            os.replace(tmp, final)
            shards[-1]["bytes"] = final.stat().st_size
            paths.append(final)
        tar, tmp = None, None

    try:
        for ident in ids:
            record = source.identity(ident)
            n_images = sum(len(f.views) for f in record.frames)
            if n_images < 2:
                log.warning("pack: identity %s has %d image(s); skipped (few-to-many needs 2)", ident, n_images)
                skipped.append(ident)
                if progress is not None:
                    progress(1)
                continue
            if tar is None or shards[-1]["identities"] >= identities_per_shard:
                close()
                name = SHARD_NAME.format(len(shards))
                tmp = out / (name + ".tmp")
                tar = tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT)
                shards.append({"name": name, "identities": 0, "images": 0, "bytes": 0})
            key, n = shard_key(ident), 1
            while key in keys:
                n += 1
                key = f"{shard_key(ident)}_{n}"
            keys.add(key)
            rec, members = _identity_members(source, ident, record, None if size is None else int(size), fit,
                                             image_format)
            _add(tar, f"{key}.json", (json.dumps(asdict(rec), sort_keys=True) + "\n").encode())
            for suffix, data in members:
                _add(tar, f"{key}.{suffix}", data)
            shards[-1]["identities"] += 1
            shards[-1]["images"] += n_images
            if progress is not None:
                progress(1)
        close()
    finally:
        if tar is not None:
            tar.close()
            if tmp is not None:
                tmp.unlink(missing_ok=True)
    index = {"format": SHARD_FORMAT, "version": SHARD_VERSION, "kind": source.kind,
             "identities": sum(s["identities"] for s in shards), "images": sum(s["images"] for s in shards),
             "identities_per_shard": int(identities_per_shard), "size": size, "fit": fit if size else None,
             "image_format": image_format, "skipped": skipped, "shards": shards}
    tmp_index = out / "index.json.tmp"
    tmp_index.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp_index, out / "index.json")
    log.info("packed %d identities (%d images) into %d shard(s) in %s", index["identities"], index["images"],
             len(paths), out)
    return paths


# ---------------------------------------------------------------------------------------- reading
@dataclass
class ShardSample:
    """One identity read from a shard: its record and its members' bytes (by suffix)."""

    key: str
    record: IdentityRecord
    files: dict[str, bytes] = field(repr=False)
    shard: str = ""

    def load_view(self, view: ViewRecord) -> tuple[np.ndarray, np.ndarray | None]:
        """RGB float32 (H,W,3) in [0,1] and mask float32 (H,W) or None, decoded from memory."""
        try:
            rgb = to_float(decode_image(self.files[view.image]))
            mask = to_float(decode_image(self.files[view.mask]))[..., 0] if view.mask else None
        except KeyError as e:
            raise InvalidInput(f"{self.shard}: sample {self.key} has no member {self.key}.{e.args[0]}") from None
        return rgb, mask


def _split_member(member: tarfile.TarInfo, shard: str) -> tuple[str, str] | None:
    """(key, suffix) of a tar member, None for directories; refuses unsafe names and non-files."""
    name = member.name
    if member.isdir():
        return None
    if not member.isfile():
        raise InvalidInput(f"{shard}: member {name!r} is a link or special file; shards hold regular files only")
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or "\x00" in name or any(p in ("..", "") for p in parts):
        raise InvalidInput(f"{shard}: unsafe member name {name!r} (absolute, '..' or backslash); refused")
    base = parts[-1]
    dot = base.find(".")
    if dot <= 0 or dot == len(base) - 1:
        raise InvalidInput(f"{shard}: member {name!r} is not KEY.suffix")
    return "/".join(parts[:-1] + [base[:dot]]), base[dot + 1:]


def _parse_sample(key: str, files: dict[str, bytes], shard: str) -> ShardSample:
    if "json" not in files:
        raise InvalidInput(f"{shard}: sample {key} has no {key}.json record")
    try:
        doc = json.loads(files["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"{shard}: {key}.json is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{shard}: {key}.json is not an identity record")
    record = IdentityRecord.from_dict(doc)
    for frame in record.frames:
        for view in frame.views:
            for name in (view.image, view.mask):
                if name is not None and name not in files:
                    raise InvalidInput(f"{shard}: {key}.json names {name!r} but the shard has no {key}.{name}")
    return ShardSample(key=key, record=record, files=files, shard=shard)


def read_shard(path: str | Path, want: Callable[[str], bool] | None = None, *,
               max_member_bytes: int = MAX_MEMBER_BYTES, max_sample_bytes: int = MAX_SAMPLE_BYTES) -> Iterator[ShardSample]:
    """Stream the identities of one shard (plain or gzip tar). ``want(key)`` is asked once per sample
    in order; a sample it refuses is skipped without reading its data."""
    path = Path(path)
    shard = path.name
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise NotFound(f"cannot open shard {path}: {e.strerror or e}") from None
    with fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
        key: str | None = None
        files: dict[str, bytes] = {}
        take, total, seen = True, 0, set()
        for member in tar:
            split = _split_member(member, shard)
            if split is None:
                continue
            k, suffix = split
            if k != key:
                if key is not None and take:
                    yield _parse_sample(key, files, shard)
                if k in seen:
                    raise InvalidInput(f"{shard}: the members of sample {k} are not contiguous")
                seen.add(k)
                key, files, total = k, {}, 0
                take = want is None or want(k)
            if not take:
                continue
            if member.size > max_member_bytes:
                raise LimitExceeded(f"{shard}: member {member.name} is {member.size} bytes; the limit is {max_member_bytes}")
            total += member.size
            if total > max_sample_bytes:
                raise LimitExceeded(f"{shard}: sample {k} exceeds {max_sample_bytes} bytes")
            if suffix in files:
                raise InvalidInput(f"{shard}: duplicate member {member.name}")
            f = tar.extractfile(member)
            assert f is not None
            files[suffix] = f.read()
        if key is not None and take:
            yield _parse_sample(key, files, shard)


def read_index(root: str | Path) -> dict[str, Any]:
    """``index.json`` of a shard folder (validated)."""
    path = Path(root) / "index.json"
    try:
        info = json.loads(path.read_text())
    except OSError as e:
        raise NotFound(f"cannot read {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{path} is not valid JSON: {e}") from None
    if not isinstance(info, dict) or info.get("format") != SHARD_FORMAT or info.get("version") != SHARD_VERSION:
        raise InvalidInput(f"{path}: not an {SHARD_FORMAT} v{SHARD_VERSION} index")
    return info


class ShardSpec:
    """A shard stream named by a dataset spec (``open_source`` returns it for shards).

    It is not a map-style identity source: build a :class:`ShardDataset` from it (``.dataset(cfg)``);
    ``identities`` / ``identity`` / ``load_view`` raise a clear error."""

    is_stream = True

    def __init__(self, shards: Sequence[Path], info: dict[str, Any] | None = None, root: Path | None = None):
        self.shards, self.info, self.root = list(shards), dict(info or {}), root

    @property
    def kind(self) -> str:
        return str(self.info.get("kind", "unknown"))

    @property
    def num_identities(self) -> int | None:
        n = self.info.get("identities")
        return int(n) if isinstance(n, int) else None

    def _stream_error(self) -> InvalidInput:
        return InvalidInput(f"{self.root or self.shards[0]} is a stream of tar shards, not a map-style dataset",
                            hint="train from it with ffavatar.data.shards.ShardDataset (spec.dataset(cfg))")

    @property
    def identities(self) -> list[str]:
        raise self._stream_error()

    def identity(self, identity: str) -> IdentityRecord:
        raise self._stream_error()

    def load_view(self, identity: str, view: ViewRecord) -> tuple[np.ndarray, np.ndarray | None]:
        raise self._stream_error()

    def dataset(self, cfg: SamplerConfig, seed: int = 0, shuffle_buffer: int = 64, **kwargs: Any) -> ShardDataset:
        return ShardDataset(self, cfg, seed=seed, shuffle_buffer=shuffle_buffer, **kwargs)

    def __repr__(self) -> str:
        return f"ShardSpec({len(self.shards)} shards, kind={self.kind!r}, root={str(self.root)!r})"


def list_shards(urls_or_dir: str | Path | Sequence[str | Path] | ShardSpec) -> tuple[list[Path], dict[str, Any], Path | None]:
    """(shard paths, index info or {}, folder or None) for a folder, one shard file or a list of files."""
    if isinstance(urls_or_dir, ShardSpec):
        return urls_or_dir.shards, urls_or_dir.info, urls_or_dir.root
    items = [urls_or_dir] if isinstance(urls_or_dir, (str, Path)) else list(urls_or_dir)
    for it in items:
        if "://" in str(it):
            raise InvalidInput(f"shard location {it!r}: only local files are read",
                               hint="copy or mount the shards locally (remote streaming is not built in)")
    if len(items) == 1 and Path(items[0]).is_dir():
        root = Path(items[0])
        if (root / "index.json").is_file():
            info = read_index(root)
            names = [s.get("name", "") for s in info.get("shards", []) if isinstance(s, dict)]
            bad = [n for n in names if not isinstance(n, str) or not _SHARD_FILE.match(n)]
            if bad:
                raise InvalidInput(f"{root}/index.json names invalid shard files {bad[:3]}")
            paths = [root / n for n in names]
        else:
            info = {}
            paths = sorted(p for p in root.iterdir() if _SHARD_FILE.match(p.name) and p.is_file())
        if not paths:
            raise NotFound(f"no .tar shards in {root}")
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise NotFound(f"{root}: shards listed in index.json are missing: {missing[:3]}")
        return paths, info, root
    paths = [Path(p) for p in items]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise NotFound(f"shard files not found: {missing[:3] or '(none given)'}")
    return paths, {}, None


def _shuffled(items: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Buffer shuffle: hold ``size`` items, emit a random one as each new one arrives."""
    if size <= 1:
        yield from items
        return
    buf: list[Any] = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        i = int(rng.integers(size))
        yield buf[i]
        buf[i] = x
    for i in rng.permutation(len(buf)):
        yield buf[i]


class ShardDataset(IterableDataset):
    """Streams few-to-many samples from tar shards (see the module docstring).

    Args:
        urls_or_dir: a shard folder (its index.json, else its ``*.tar``), a shard file, a list of them,
            or a :class:`ShardSpec`.
        cfg: the sampler configuration.
        seed: base seed; the epoch, rank and worker are mixed in.
        shuffle_buffer: samples held for shuffling (memory ≈ this × one sample's tensors).
        samples_per_identity: few-to-many samples drawn from each identity per pass.
        split_by: "shard" or "identity" (see the module docstring).
        rank, world_size: override torch.distributed's (tests, custom launchers).
        repeat: start the next epoch when one ends (an endless stream for step-based training).
        return_ids: add ``"identity"`` (the id string) to each sample.
    Every identity is visited exactly once per epoch across all ranks and workers.
    """

    def __init__(self, urls_or_dir: str | Path | Sequence[str | Path] | ShardSpec, cfg: SamplerConfig,
                 seed: int = 0, shuffle_buffer: int = 64, *, samples_per_identity: int = 1,
                 split_by: str = "shard", rank: int | None = None, world_size: int | None = None,
                 repeat: bool = False, return_ids: bool = False):
        super().__init__()
        if split_by not in SPLITS:
            raise InvalidInput(f"split_by must be one of {SPLITS}, got {split_by!r}")
        if samples_per_identity < 1 or shuffle_buffer < 0:
            raise InvalidInput("samples_per_identity must be >= 1 and shuffle_buffer >= 0")
        if (rank is None) != (world_size is None) or (world_size is not None and not 0 <= rank < world_size):
            raise InvalidInput("give both rank and world_size (0 <= rank < world_size), or neither")
        self.shards, self.info, self.root = list_shards(urls_or_dir)
        self.cfg, self.seed, self.shuffle_buffer = cfg, int(seed), int(shuffle_buffer)
        self.samples_per_identity, self.split_by = int(samples_per_identity), split_by
        self.rank, self.world_size, self.repeat, self.return_ids = rank, world_size, repeat, return_ids
        self.epoch = 0

    @property
    def kind(self) -> str:
        return str(self.info.get("kind", "unknown"))

    @property
    def num_identities(self) -> int | None:
        """Identities per epoch (from index.json; None when the shards came without one)."""
        n = self.info.get("identities")
        return int(n) if isinstance(n, int) else None

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle deterministically (call before creating the DataLoader iterator of each epoch;
        with ``persistent_workers=True`` workers would keep the old epoch)."""
        self.epoch = int(epoch)

    def _rank_world(self) -> tuple[int, int]:
        if self.world_size is not None:
            return int(self.rank), int(self.world_size)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def reader_shards(self, epoch: int, reader: int, readers: int) -> tuple[list[Path], Callable[[int], bool]]:
        """Shards reader ``reader`` of ``readers`` opens in ``epoch``, and which running identity
        numbers (over those shards, in order) it keeps."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        shards = [self.shards[i] for i in order]
        if self.split_by == "shard":
            if len(shards) < readers:
                raise InvalidInput(f"{len(shards)} shard(s) for {readers} readers (ranks × workers): some would get "
                                   "no data", hint="pack with fewer identities per shard, use fewer workers, or "
                                                   "split_by='identity'")
            return shards[reader::readers], lambda j: True
        return shards, lambda j: j % readers == reader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = self._rank_world()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        reader, readers = rank * nw + wid, world * nw
        epoch = self.epoch
        while True:
            shards, keep = self.reader_shards(epoch, reader, readers)
            rng = np.random.default_rng([self.seed, epoch, reader, 7])
            yield from _shuffled(self._samples(shards, keep, rng), self.shuffle_buffer, rng)
            if not self.repeat:
                return
            epoch += 1

    def _samples(self, shards: list[Path], keep: Callable[[int], bool], rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        count = 0

        def want(_key: str) -> bool:
            nonlocal count
            count += 1
            return keep(count - 1)

        for path in shards:
            for s in read_shard(path, want):
                for _ in range(self.samples_per_identity):
                    sample = sample_few_to_many(s.record, s.load_view, rng, self.cfg)
                    if self.return_ids:
                        sample["identity"] = s.record.id
                    yield sample


__all__ = ["SHARD_FORMAT", "ShardDataset", "ShardSample", "ShardSpec", "list_shards", "pack", "read_index",
           "read_shard", "shard_key"]
