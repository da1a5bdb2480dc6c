"""Safe loading of FLAME model files (2020, 2023, 2023 Open; ``.pkl``, ``.npz``) and landmark embeddings.

Official FLAME pickles were written by Python 2 and hold ``chumpy.ch.Ch`` objects and
``scipy.sparse`` matrices. A pickle is code, so they are read through a restricted unpickler: it maps
chumpy and scipy.sparse classes onto inert stand-ins that only keep their array state, allows the
few numpy reconstruction functions needed for arrays, and refuses every other class *before* it
could run (``UnsafePickle`` names the class). Nothing needs chumpy installed.
"""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from ..errors import FlameFileError, UnsafePickle

log = logging.getLogger(__name__)

NUM_JOINTS = 5
"""FLAME joints: root (global), neck, jaw, eye_L, eye_R."""

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


def _plain(obj: Any) -> Any:
    """Turn stand-ins into numpy arrays, recursively through dicts, lists and tuples."""
    if isinstance(obj, (_ChumpyStandIn, _SparseStandIn)):
        return obj.to_array()
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` through :class:`RestrictedUnpickler` (Python 2 strings as latin1)."""
    try:
        return _plain(RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load())
    except (UnsafePickle, FlameFileError):
        raise
    except Exception as e:  # any parse failure of a malformed stream, reported as a file error
        raise FlameFileError(f"not a readable pickle: {type(e).__name__}: {e}", hint=_FLAME_HINT) from e


def _load_npy(data: bytes) -> Any:
    """A ``.npy`` file; object arrays (dicts saved by np.save) go through the restricted unpickler."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    _, _, dtype = read_header(f)
    if dtype.hasobject:
        obj = restricted_loads(f.read())
        return obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
    return np.load(io.BytesIO(data), allow_pickle=False)


def read_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.pkl``, ``.npz`` or ``.npy`` file into a dict of numpy arrays, safely."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FlameFileError(f"FLAME file not found: {p}", hint=_FLAME_HINT)
    data = p.read_bytes()
    suffix = p.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except ValueError as e:
            raise FlameFileError(f"{p.name}: the .npz holds pickled objects or is corrupt ({e})",
                                 hint=_FLAME_HINT) from e
        except Exception as e:
            raise FlameFileError(f"{p.name} is not a readable .npz file: {e}", hint=_FLAME_HINT) from e
    if suffix == ".npy":
        obj = _load_npy(data)
    elif suffix in (".pkl", ".pickle"):
        obj = restricted_loads(data)
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


def extract_landmarks(emb: dict[str, Any], n_faces: int) -> dict[str, np.ndarray] | None:
    """``lmk_face_idx (L,)`` and ``lmk_b_coords (L,3)`` from a FLAME/DECA embedding dict, or None.

    Accepts the keys of ``flame_static_embedding.pkl`` (``lmk_face_idx``, ``lmk_b_coords``) and of
    DECA's ``landmark_embedding.npy`` (``full_lmk_faces_idx``/``full_lmk_bary_coords``, 68 points,
    preferred, else ``static_lmk_faces_idx``/``static_lmk_bary_coords``).
    """
    for fk, bk in (("lmk_face_idx", "lmk_b_coords"), ("full_lmk_faces_idx", "full_lmk_bary_coords"),
                   ("static_lmk_faces_idx", "static_lmk_bary_coords")):
        if fk in emb and bk in emb:
            idx = np.asarray(emb[fk]).astype(np.int64).reshape(-1)
            bary = np.asarray(emb[bk], dtype=np.float64).reshape(-1, 3)
            if len(idx) != len(bary):
                raise FlameFileError(f"landmark embedding: {len(idx)} faces but {len(bary)} barycentric rows",
                                     hint="supply flame_static_embedding.pkl or landmark_embedding.npy")
            if len(idx) and (idx.min() < 0 or idx.max() >= n_faces):
                raise FlameFileError(f"landmark embedding indexes faces outside 0..{n_faces - 1}: it belongs "
                                     "to another head model", hint="use the embedding that ships with your FLAME")
            return {"lmk_face_idx": idx, "lmk_b_coords": bary}
    return None


def load_model_file(path: str | Path, landmarks: str | Path | None = None) -> dict[str, np.ndarray]:
    """Load and validate a FLAME model file; optionally merge a separate landmark embedding file."""
    model = read_file(path)
    if landmarks is not None:
        emb = read_file(landmarks)
        faces = np.asarray(model.get("f", np.zeros((0, 3))))
        lmk = extract_landmarks(emb, n_faces=len(faces))
        if lmk is None:
            raise FlameFileError(f"{Path(landmarks).name} holds no landmark embedding (keys {sorted(emb)})",
                                 hint="supply flame_static_embedding.pkl or landmark_embedding.npy")
        model = {**model, **lmk}
    return validate(model)
