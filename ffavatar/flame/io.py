"""Safe loading of FLAME model files (2020, 2023, 2023 Open; ``.pkl``, ``.npz``) and landmark embeddings.

Official FLAME pickles were written by Python 2 and hold ``chumpy.ch.Ch`` objects and
``scipy.sparse`` matrices. A pickle is code, so they are read through a restricted unpickler: it maps
chumpy and scipy.sparse classes onto inert stand-ins that only keep their array state, allows the
few numpy reconstruction functions needed for arrays, and refuses every other class *before* it
could run (``UnsafePickle`` names the class). Nothing needs chumpy installed.

Landmark embeddings that carry torch tensors (DECA's ``landmark_embedding.npy``, VHAP's
``landmark_embedding_with_eyes.npy``: their dynamic-contour entries) are read without torch: the
loader accepts exactly torch's tensor pickle (``torch._utils._rebuild_tensor_v2`` over a storage
saved by ``torch.storage._load_from_bytes`` in torch's legacy format) and rebuilds a numpy array
from the storage bytes; any other torch class is refused.

What a file may hold is bounded (``MAX_FILE_BYTES``, ``MAX_DEPTH``, ``MAX_ITEMS``,
``MAX_ARRAY_ELEMENTS``): a small pickle of nested shared lists ("billion laughs") or a sparse matrix
or npz member that declares a huge size is refused with :class:`~ffavatar.errors.LimitExceeded`
before it can grow.
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from ..errors import FlameFileError, LimitExceeded, UnsafePickle

log = logging.getLogger(__name__)

NUM_JOINTS = 5
"""FLAME joints: root (global), neck, jaw, eye_L, eye_R."""

MAX_FILE_BYTES = 1 << 30
"""Largest FLAME-side file read (FLAME 2023 is ~150 MB)."""
MAX_DEPTH = 32
"""Deepest nesting of containers in a pickle (a FLAME file needs < 8)."""
MAX_ITEMS = 5_000_000
"""Most container elements a pickle may hold, counting every reference to a shared container."""
MAX_ARRAY_ELEMENTS = 200_000_000
"""Most elements of one array built from a declared size (dense sparse matrix, torch tensor, npz member)."""
MEDIAPIPE_POINTS = 478
"""Points of MediaPipe's face landmarker (``landmark_indices`` of mediapipe_landmark_embedding.npz)."""

REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")

_FLAME_HINT = (
    "supply a FLAME 2020/2023/2023 Open model file (e.g. flame2023_Open.pkl or generic_model.pkl) "
    "with --flame or FFAVATAR_FLAME, or omit both to use the built-in demo head"
)


class _ChumpyStandIn:
    """Inert stand-in for any ``chumpy`` class: keeps the pickled state, whose ``x`` is the array."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.state: dict = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise FlameFileError(f"chumpy object with a state of type {type(state).__name__}", hint=_FLAME_HINT)
        self.state = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in state.items()}

    def to_array(self) -> np.ndarray:
        x = self.state.get("x")
        if isinstance(x, _ChumpyStandIn):
            return x.to_array()
        if x is None:
            raise FlameFileError(
                f"a chumpy object without an array 'x' (keys: {sorted(self.state)})", hint=_FLAME_HINT)
        return np.asarray(x)


class _SparseStandIn:
    """Inert stand-in for scipy.sparse matrices; rebuilt from (data, indices, indptr / row, col, shape)."""

    format = "csc"

    def __init__(self, *args: Any, **kwargs: Any):
        self.state: dict = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise FlameFileError(f"sparse matrix with a state of type {type(state).__name__}", hint=_FLAME_HINT)
        self.state = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in state.items()}

    def to_array(self) -> np.ndarray:
        s = self.state
        shape = tuple(int(n) for n in (s.get("_shape") or s.get("shape") or ()))
        fmt = s.get("format", self.format)
        fmt = fmt.decode("latin1") if isinstance(fmt, bytes) else fmt
        if len(shape) != 2 or min(shape) < 0 or shape[0] * shape[1] > MAX_ARRAY_ELEMENTS:
            raise LimitExceeded(f"a sparse matrix in the FLAME file declares the shape {shape}; at most "
                                f"{MAX_ARRAY_ELEMENTS} elements are accepted", hint=_FLAME_HINT)
        try:
            if fmt in ("csc", "csr"):
                cls = scipy.sparse.csc_matrix if fmt == "csc" else scipy.sparse.csr_matrix
                m = cls((s["data"], s["indices"], s["indptr"]), shape=shape)
            elif fmt == "coo":
                m = scipy.sparse.coo_matrix((s["data"], (s["row"], s["col"])), shape=shape)
            else:
                raise KeyError(f"format {fmt!r}")
        except (KeyError, ValueError, TypeError) as e:
            raise FlameFileError(f"unreadable sparse matrix in the FLAME file: {e}", hint=_FLAME_HINT) from e
        return np.asarray(m.toarray())


def _sparse_class(fmt: str) -> type:
    return type(f"_{fmt}_standin", (_SparseStandIn,), {"format": fmt})


def _reconstructor(cls: type, base: type, state: Any = None) -> Any:
    """``copy_reg._reconstructor`` restricted to our stand-ins (old-style pickles of new-style classes)."""
    if not (isinstance(cls, type) and issubclass(cls, (_ChumpyStandIn, _SparseStandIn))):
        raise UnsafePickle(f"refused to reconstruct {cls!r}", hint=_FLAME_HINT)
    return cls()


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes; strings only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise UnsafePickle(f"refused _codecs.encode({type(text).__name__}, {encoding!r})", hint=_FLAME_HINT)
    return text.encode(encoding)


# ---------------------------------------------------------------------------- torch tensors, no torch
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001
_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _TorchStorageType:
    """What ``torch.<X>Storage`` means inside a tensor pickle: only its element type."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(_TORCH_STORAGE_DTYPES[name])


class _StorageRef:
    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _TorchStorageUnpickler(pickle.Unpickler):
    """The object pickle of torch's legacy ``torch.save(storage)``: storage types and references only."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _TorchStorageType(name)
        raise UnsafePickle(f"the tensor data asks for '{module}.{name}'; only torch storage types are read "
                           "(refused without running it)", hint=_FLAME_HINT)

    def persistent_load(self, pid: Any) -> _StorageRef:
        ok = (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
              and isinstance(pid[1], _TorchStorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)
              and (len(pid) == 5 or pid[5] is None))
        if not ok:
            raise UnsafePickle(f"unsupported torch storage reference {pid!r:.120}", hint=_FLAME_HINT)
        if not 0 <= pid[4] <= MAX_ARRAY_ELEMENTS:
            raise LimitExceeded(f"a torch storage in the file declares {pid[4]} elements; at most "
                                f"{MAX_ARRAY_ELEMENTS} are accepted", hint=_FLAME_HINT)
        return _StorageRef(pid[2], pid[1].dtype, pid[4])


def _load_torch_storage(data: Any) -> np.ndarray:
    """``torch.storage._load_from_bytes`` restricted to one storage in torch's legacy format
    (magic, protocol 1001, sys_info, the storage reference, its key list, then per key an int64
    element count and the raw little-endian elements), returned as a 1-D numpy array."""
    if isinstance(data, str):  # written by Python 2: bytes arrive as latin-1 text
        data = data.encode("latin1")
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickle(f"torch storage data of type {type(data).__name__}", hint=_FLAME_HINT)
    f = io.BytesIO(bytes(data))
    try:
        magic = _TorchStorageUnpickler(f).load()
        proto = _TorchStorageUnpickler(f).load()
        info = _TorchStorageUnpickler(f).load()
        ref = _TorchStorageUnpickler(f).load()
        keys = _TorchStorageUnpickler(f).load()
    except (UnsafePickle, LimitExceeded):
        raise
    except Exception as e:
        raise FlameFileError(f"unreadable torch tensor data in the file: {type(e).__name__}: {e}",
                             hint=_FLAME_HINT) from e
    if magic != _TORCH_LEGACY_MAGIC or proto != _TORCH_LEGACY_PROTOCOL or not isinstance(info, dict):
        raise FlameFileError("torch tensor data in an unknown format", hint=_FLAME_HINT)
    if not info.get("little_endian", False):
        raise FlameFileError("big-endian torch tensor data is not supported", hint=_FLAME_HINT)
    if not isinstance(ref, _StorageRef) or keys != [ref.key]:
        raise FlameFileError("torch tensor data does not hold exactly one storage", hint=_FLAME_HINT)
    head = f.read(8)
    numel = int.from_bytes(head, "little") if len(head) == 8 else -1
    nbytes = ref.numel * ref.dtype.itemsize
    raw = f.read(nbytes)
    if numel != ref.numel or len(raw) != nbytes:
        raise FlameFileError(f"truncated torch storage ({len(raw)} of {nbytes} bytes)", hint=_FLAME_HINT)
    return np.frombuffer(raw, dtype=ref.dtype.newbyteorder("<")).astype(ref.dtype)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    hooks: Any = None, metadata: Any = None) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` as a numpy array: the strided view of the storage, copied."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1 or storage.dtype.hasobject:
        raise UnsafePickle("a torch tensor without a plain storage", hint=_FLAME_HINT)
    if hooks or metadata:
        raise UnsafePickle("a torch tensor with hooks or metadata", hint=_FLAME_HINT)
    try:
        offset, size, stride = int(offset), tuple(int(n) for n in size), tuple(int(n) for n in stride)
    except (TypeError, ValueError):
        raise FlameFileError("a torch tensor with a malformed size or stride", hint=_FLAME_HINT) from None
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise FlameFileError(f"a torch tensor with size {size} and stride {stride}", hint=_FLAME_HINT)
    count = int(np.prod(size, dtype=np.int64)) if size else 1
    if count > MAX_ARRAY_ELEMENTS:
        raise LimitExceeded(f"a torch tensor of size {size}; at most {MAX_ARRAY_ELEMENTS} elements are accepted",
                            hint=_FLAME_HINT)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if count else offset - 1
    if last >= len(storage):
        raise FlameFileError(f"a torch tensor reaches past its storage ({last} >= {len(storage)})", hint=_FLAME_HINT)
    if count == 0:
        return np.zeros(size, dtype=storage.dtype)
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=tuple(s * item for s in stride))
    return np.array(view, copy=True)


def _ordered_dict(*args: Any) -> dict:
    """``collections.OrderedDict`` for a tensor's (empty) backward-hook slot: a plain, inert dict."""
    return dict(*args)


def _numpy_attr(module: str, name: str) -> Any:
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
    return getattr(getattr(core, module), name)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("_codecs", "encode"): _encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _load_torch_storage,
    ("collections", "OrderedDict"): _ordered_dict,
}
for _mod in ("builtins", "__builtin__"):  # inert containers chumpy objects keep in their state
    _ALLOWED[(_mod, "set")], _ALLOWED[(_mod, "frozenset")] = set, frozenset
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _numpy_attr("multiarray", "_reconstruct")
    _ALLOWED[(_mod, "scalar")] = _numpy_attr("multiarray", "scalar")
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _numpy_attr("numeric", "_frombuffer")
for _fmt in ("csc", "csr", "coo"):
    _cls = _sparse_class(_fmt)
    for _mod in ("scipy.sparse", f"scipy.sparse.{_fmt}", f"scipy.sparse._{_fmt}"):
        _ALLOWED[(_mod, f"{_fmt}_matrix")] = _cls
        _ALLOWED[(_mod, f"{_fmt}_array")] = _cls


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays, scipy.sparse matrices and chumpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyStandIn
        raise UnsafePickle(
            f"the pickle asks for class '{module}.{name}', which a FLAME file never needs; refused "
            "without running it", hint="only load FLAME files from their official source")


def _children(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, (_ChumpyStandIn, _SparseStandIn)):
        return list(obj.state.values())
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        return list(obj.flat)
    return []


def check_bounds(obj: Any, where: str = "the file") -> None:
    """Refuse an unpickled structure that is too deep (``MAX_DEPTH``), contains itself, or holds
    more than ``MAX_ITEMS`` container elements when every reference to a shared container is counted
    (what any copy or ``np.asarray`` of it would build). Linear in the number of distinct objects.

    Raises:
        LimitExceeded: too deep or too many elements; FlameFileError: a cycle.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(o: Any, depth: int) -> int:
        kids = _children(o)
        if not kids:
            return 1
        key = id(o)
        if key in sizes:
            return sizes[key]
        if depth >= MAX_DEPTH:
            raise LimitExceeded(f"{where} nests containers deeper than {MAX_DEPTH} levels; a FLAME file "
                                "never does", hint=_FLAME_HINT)
        if key in active:
            raise FlameFileError(f"{where} holds a container that contains itself", hint=_FLAME_HINT)
        active.add(key)
        total = 1
        for k in kids:
            total += size(k, depth + 1)
            if total > MAX_ITEMS:
                raise LimitExceeded(f"{where} expands to more than {MAX_ITEMS} elements (nested shared "
                                    "containers); refused before building it", hint=_FLAME_HINT)
        active.discard(key)
        sizes[key] = total
        return total

    size(obj, 0)


def _plain(obj: Any, memo: dict[int, Any] | None = None) -> Any:
    """Turn stand-ins into numpy arrays, recursively through dicts, lists and tuples (after
    :func:`check_bounds`; a shared container is converted once and stays shared)."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, (_ChumpyStandIn, _SparseStandIn)):
        out: Any = obj.to_array()
    elif isinstance(obj, dict):
        out = {(k.decode("latin1") if isinstance(k, bytes) else k): _plain(v, memo) for k, v in obj.items()}
    elif isinstance(obj, (list, tuple)):
        out = type(obj)(_plain(v, memo) for v in obj)
    else:
        return obj
    memo[id(obj)] = out
    return out


def restricted_loads(data: bytes, where: str = "the pickle") -> Any:
    """Unpickle ``data`` through :class:`RestrictedUnpickler` (Python 2 strings as latin1), within
    the bounds of :func:`check_bounds` and ``MAX_FILE_BYTES``."""
    if len(data) > MAX_FILE_BYTES:
        raise LimitExceeded(f"{where} is {len(data)} bytes; at most {MAX_FILE_BYTES} are read", hint=_FLAME_HINT)
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (UnsafePickle, FlameFileError, LimitExceeded):
        raise
    except Exception as e:  # any parse failure of a malformed stream, reported as a file error
        raise FlameFileError(f"{where} is not a readable pickle: {type(e).__name__}: {e}", hint=_FLAME_HINT) from e
    check_bounds(obj, where)
    return _plain(obj)


def _load_npy(data: bytes, where: str = "the .npy file") -> Any:
    """A ``.npy`` file; object arrays (dicts saved by np.save) go through the restricted unpickler."""
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        if not dtype.hasobject:
            if int(np.prod(shape, dtype=np.int64)) > MAX_ARRAY_ELEMENTS:
                raise LimitExceeded(f"{where} declares an array of shape {shape}", hint=_FLAME_HINT)
            return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise FlameFileError(f"{where} is not a readable .npy file: {e}", hint=_FLAME_HINT) from e
    obj = restricted_loads(f.read(), where)
    return obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj


def check_npz_sizes(data: bytes, name: str) -> None:
    """Refuse an .npz whose members unpack to more than ``MAX_FILE_BYTES`` (a zip bomb), by the
    sizes its zip directory declares (zipfile itself stops at the declared size)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            total = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise FlameFileError(f"{name} is not a readable .npz file: {e}", hint=_FLAME_HINT) from e
    if total > MAX_FILE_BYTES:
        raise LimitExceeded(f"{name} unpacks to {total} bytes; at most {MAX_FILE_BYTES} are read", hint=_FLAME_HINT)


def read_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.pkl``, ``.npz`` or ``.npy`` file into a dict of numpy arrays, safely."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FlameFileError(f"FLAME file not found: {p}", hint=_FLAME_HINT)
    if p.stat().st_size > MAX_FILE_BYTES:
        raise LimitExceeded(f"{p.name} is {p.stat().st_size} bytes; a FLAME file is at most {MAX_FILE_BYTES}",
                            hint=_FLAME_HINT)
    data = p.read_bytes()
    suffix = p.suffix.lower()
    if suffix == ".npz":
        check_npz_sizes(data, p.name)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except ValueError as e:
            raise FlameFileError(f"{p.name}: the .npz holds pickled objects or is corrupt ({e})",
                                 hint=_FLAME_HINT) from e
        except Exception as e:
            raise FlameFileError(f"{p.name} is not a readable .npz file: {e}", hint=_FLAME_HINT) from e
    if suffix == ".npy":
        obj = _load_npy(data, p.name)
    elif suffix in (".pkl", ".pickle"):
        obj = restricted_loads(data, p.name)
    else:
        raise FlameFileError(f"{p.name}: unknown FLAME file type {suffix!r} (expected .pkl or .npz)",
                             hint=_FLAME_HINT)
    if not isinstance(obj, dict):
        raise FlameFileError(f"{p.name} holds a {type(obj).__name__}, not a dict of arrays", hint=_FLAME_HINT)
    return obj


def _check_shape(name: str, a: np.ndarray, expected: str, ok: bool) -> None:
    if not ok:
        raise FlameFileError(f"FLAME array '{name}' has shape {a.shape}, expected {expected}", hint=_FLAME_HINT)


def validate(model: dict[str, Any]) -> dict[str, np.ndarray]:
    """Check a FLAME dict and return it with normalized dtypes and shapes.

    Returns v_template (V,3) f64, f (F,3) i64, shapedirs (V,3,K) f64, posedirs (V,3,36) f64,
    J_regressor (5,V) f64 (dense), weights (V,5) f64, kintree_table (2,5) i64, plus the optional
    extras ``n_shape``, ``expression_names``, ``shape_names``, ``vertex_part`` and landmarks.
    """
    missing = [k for k in REQUIRED_KEYS if k not in model]
    if missing:
        raise FlameFileError(f"the FLAME file lacks {missing} (it has {sorted(model)})", hint=_FLAME_HINT)
    out: dict[str, np.ndarray] = {}
    try:
        v = np.asarray(model["v_template"], dtype=np.float64)
        f = np.asarray(model["f"]).astype(np.int64)
        sd = np.asarray(model["shapedirs"], dtype=np.float64)
        pd = np.asarray(model["posedirs"], dtype=np.float64)
        jr = model["J_regressor"]
        jr = np.asarray(jr.toarray() if scipy.sparse.issparse(jr) else jr, dtype=np.float64)
        w = np.asarray(model["weights"], dtype=np.float64)
        kt = np.asarray(model["kintree_table"]).astype(np.int64)
    except (TypeError, ValueError) as e:
        raise FlameFileError(f"a FLAME array is not numeric: {e}", hint=_FLAME_HINT) from e
    _check_shape("v_template", v, "(V, 3)", v.ndim == 2 and v.shape[1] == 3 and len(v) > 0)
    n = len(v)
    _check_shape("f", f, "(F, 3) vertex indices", f.ndim == 2 and f.shape[1] == 3 and len(f) > 0)
    if f.min() < 0 or f.max() >= n:
        raise FlameFileError(f"FLAME faces index vertices outside 0..{n - 1}", hint=_FLAME_HINT)
    _check_shape("shapedirs", sd, f"({n}, 3, K)", sd.ndim == 3 and sd.shape[:2] == (n, 3))
    if pd.ndim == 2 and pd.shape == (n * 3, 36):
        pd = pd.reshape(n, 3, 36)
    _check_shape("posedirs", pd, f"({n}, 3, 36) or ({n * 3}, 36)", pd.shape == (n, 3, 36))
    _check_shape("J_regressor", jr, f"({NUM_JOINTS}, {n})", jr.shape == (NUM_JOINTS, n))
    _check_shape("weights", w, f"({n}, {NUM_JOINTS})", w.shape == (n, NUM_JOINTS))
    _check_shape("kintree_table", kt, f"(2, {NUM_JOINTS})", kt.shape == (2, NUM_JOINTS))
    for name, a in (("v_template", v), ("shapedirs", sd), ("posedirs", pd), ("J_regressor", jr), ("weights", w)):
        if not np.isfinite(a).all():
            raise FlameFileError(f"FLAME array '{name}' holds NaN or infinite values", hint=_FLAME_HINT)
    out.update(v_template=v, f=f, shapedirs=sd, posedirs=pd, J_regressor=jr, weights=w, kintree_table=kt)
    n_shape = int(np.asarray(model.get("n_shape", min(300, sd.shape[2]))))
    if not 0 < n_shape <= sd.shape[2]:
        raise FlameFileError(f"n_shape={n_shape} does not fit shapedirs with {sd.shape[2]} components",
                             hint=_FLAME_HINT)
    out["n_shape"] = np.asarray(n_shape, dtype=np.int64)
    for key in ("expression_names", "shape_names"):
        if key in model:
            out[key] = np.asarray(model[key]).astype(str)
    if "vertex_part" in model:
        out["vertex_part"] = np.asarray(model["vertex_part"]).astype(np.int8).reshape(n)
    lmk = extract_landmarks(model, n_faces=len(f))
    if lmk is not None:
        out.update(lmk)
    return out


_LMK_HINT = ("supply flame_static_embedding.pkl, DECA's landmark_embedding.npy, VHAP's "
             "landmark_embedding_with_eyes.npy or mediapipe_landmark_embedding.npz")
_LMK_KEYS = (("lmk_face_idx", "lmk_b_coords"), ("full_lmk_faces_idx", "full_lmk_bary_coords"),
             ("static_lmk_faces_idx", "static_lmk_bary_coords"))


def _stacked(a: Any) -> np.ndarray:
    """An array; an object array or list of equal-length arrays becomes one stacked array."""
    arr = np.asarray(a) if not isinstance(a, list) else np.asarray(a, dtype=object)
    if arr.dtype.hasobject:
        try:
            arr = np.stack([np.asarray(x) for x in arr.reshape(-1)]).reshape(arr.shape + np.asarray(arr.flat[0]).shape)
        except (ValueError, IndexError, TypeError) as e:
            raise FlameFileError(f"landmark embedding holds ragged or non-numeric entries ({e})", hint=_LMK_HINT) \
                from None
    return arr


def extract_landmarks(emb: dict[str, Any], n_faces: int) -> dict[str, np.ndarray] | None:
    """``lmk_face_idx (L,)`` and ``lmk_b_coords (L,3)`` from a landmark embedding dict, or None.

    Accepted structures (first match wins):

    * ``flame_static_embedding.pkl`` (FLAME): ``lmk_face_idx (51,)``, ``lmk_b_coords (51, 3)``.
    * ``mediapipe_landmark_embedding.npz`` (FLAME 2023): the same keys for 105 points, plus
      ``landmark_indices (105,)``, each point's index among MediaPipe's 478 (returned too).
    * DECA's ``landmark_embedding.npy``: ``full_lmk_faces_idx (1, 68)`` / ``full_lmk_bary_coords
      (1, 68, 3)`` (preferred), else ``static_lmk_faces_idx (51,)`` / ``static_lmk_bary_coords``;
      its ``dynamic_*`` contour tensors are read but not used.
    * VHAP's ``landmark_embedding_with_eyes.npy``: as DECA's with 70 full points (the 68 iBUG
      points, then two eye points), kept in file order.

    Raises:
        FlameFileError: a dynamic contour embedding (RingNet's ``flame_dynamic_embedding.npy``,
            ``lmk_face_idx`` of shape (yaw bins, points)), mismatched lengths, or faces outside the
            head model (an embedding of another model).
    """
    for fk, bk in _LMK_KEYS:
        if fk not in emb or bk not in emb:
            continue
        idx, bary = _stacked(emb[fk]), _stacked(emb[bk])
        if idx.ndim == 2 and idx.shape[0] == 1:  # DECA / VHAP keep a leading batch axis
            idx, bary = idx[0], bary.reshape((-1,) + bary.shape[2:]) if bary.ndim == 3 else bary
        if idx.ndim != 1:
            raise FlameFileError(
                f"the landmark embedding's '{fk}' has shape {idx.shape}: a dynamic contour embedding (one row "
                "of contour points per head-yaw bin, like RingNet's flame_dynamic_embedding.npy), not a static "
                "list of landmarks", hint=_LMK_HINT)
        if bary.shape != (len(idx), 3):
            raise FlameFileError(f"landmark embedding: {len(idx)} faces but barycentric coordinates of shape "
                                 f"{bary.shape} (expected ({len(idx)}, 3))", hint=_LMK_HINT)
        try:
            idx, bary = idx.astype(np.int64), bary.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise FlameFileError(f"landmark embedding is not numeric: {e}", hint=_LMK_HINT) from None
        if len(idx) and (idx.min() < 0 or idx.max() >= n_faces):
            raise FlameFileError(f"landmark embedding indexes faces outside 0..{n_faces - 1}: it belongs "
                                 "to another head model", hint="use the embedding that ships with your FLAME")
        out = {"lmk_face_idx": idx, "lmk_b_coords": bary}
        if fk == "lmk_face_idx" and "landmark_indices" in emb:
            mp = _stacked(emb["landmark_indices"]).reshape(-1)
            if len(mp) != len(idx) or mp.dtype.kind not in "iu" or (len(mp) and (
                    mp.min() < 0 or mp.max() >= MEDIAPIPE_POINTS)):
                raise FlameFileError(f"landmark_indices must map each of the {len(idx)} landmarks to one of "
                                     f"MediaPipe's {MEDIAPIPE_POINTS} points", hint=_LMK_HINT)
            out["landmark_indices"] = mp.astype(np.int64)
        return out
    return None


def load_model_file(path: str | Path, landmarks: str | Path | None = None) -> dict[str, np.ndarray]:
    """Load and validate a FLAME model file; optionally merge a separate landmark embedding file."""
    model = read_file(path)
    if landmarks is not None:
        emb = read_file(landmarks)
        faces = np.asarray(model.get("f", np.zeros((0, 3))))
        try:
            lmk = extract_landmarks(emb, n_faces=len(faces))
        except FlameFileError as e:
            raise FlameFileError(f"{Path(landmarks).name}: {e}") from e
        if lmk is None:
            raise FlameFileError(f"{Path(landmarks).name} holds no landmark embedding (keys {sorted(emb)})",
                                 hint=_LMK_HINT)
        model = {**model, **lmk}
    return validate(model)
