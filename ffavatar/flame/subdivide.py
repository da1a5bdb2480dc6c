"""Midpoint subdivision of a FLAME mesh that carries every per-vertex attribute to the new points.

Each level splits every triangle into four through its edge midpoints (FLAME: 5,023 → ~20k → ~80k
points). Every new point is a fixed linear combination of original vertices, recorded as one sparse
``upsample`` matrix ``U (N, V)`` (rows sum to 1). Linear attributes (template, shapedirs, posedirs,
LBS weights) are carried as ``U @ X``, so a dense point animates exactly like the surface it lies on,
and original vertices keep their attributes bit for bit.
"""

from __future__ import annotations

import threading

import numpy as np
import scipy.sparse

from ..errors import InvalidInput
from .model import head_model_id

MAX_LEVEL = 3


def _split(faces: np.ndarray, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """One midpoint level. Returns new faces (4F,3) and edges (E,2) whose midpoints are vertices V..V+E."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])  # (3F,2)
    e.sort(axis=1)
    edges, inverse = np.unique(e, axis=0, return_inverse=True)
    mid = inverse.reshape(3, -1).T + n_vertices  # (F,3): midpoints of edges ab, bc, ca
    a, b, c = faces.T
    ab, bc, ca = mid.T
    new_faces = np.stack([
        np.stack([a, ab, ca], 1), np.stack([ab, b, bc], 1), np.stack([ca, bc, c], 1), np.stack([ab, bc, ca], 1),
    ], axis=1).reshape(-1, 3)
    return new_faces, edges


def upsample_matrix(faces: np.ndarray, n_vertices: int, level: int) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """Sparse ``U (N, V)`` and the subdivided faces ``(F·4^level, 3)`` for ``level`` midpoint levels."""
    if not 0 <= level <= MAX_LEVEL:
        raise InvalidInput(f"subdivision level must be 0..{MAX_LEVEL}, got {level}")
    u = scipy.sparse.identity(n_vertices, format="csr", dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    n = n_vertices
    for _ in range(level):
        faces, edges = _split(faces, n)
        m = len(edges)
        rows = np.concatenate([np.arange(n), np.repeat(np.arange(n, n + m), 2)])
        cols = np.concatenate([np.arange(n), edges.reshape(-1)])
        vals = np.concatenate([np.ones(n), np.full(2 * m, 0.5)])
        step = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(n + m, n))
        u = (step @ u).tocsr()
        n += m
    return u, faces


def _carry(u: scipy.sparse.csr_matrix, x: np.ndarray, dtype: type) -> np.ndarray:
    # C order (scipy's sparse @ dense is slow on F-order input) and in the output dtype from the start
    flat = np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=dtype)
    return (u.astype(dtype) @ flat).reshape((u.shape[0],) + x.shape[1:])


def subdivide(model: dict[str, np.ndarray], level: int, dtype: type = np.float64) -> dict[str, np.ndarray]:
    """Subdivide a validated FLAME dict ``level`` times.

    Returns a dict with the FLAME keys for the dense mesh (``v_template (N,3)``, ``f``, ``shapedirs
    (N,3,K)``, ``posedirs (N,3,36)``, ``weights (N,5)`` renormalized, ``J_regressor (5,N)`` zero on new
    points so the joints are unchanged, ``kintree_table``), the carried extras (``n_shape``, names,
    ``vertex_part`` — a new point takes the smaller part code of its parents), and ``upsample`` as
    the ``(N,V)`` CSR matrix. Landmark embeddings stay with the original mesh.
    """
    v = model["v_template"].shape[0]
    u, faces = upsample_matrix(model["f"], v, level)
    w = _carry(u, model["weights"], np.float64)
    w /= w.sum(axis=1, keepdims=True)
    out = {
        "v_template": _carry(u, model["v_template"], dtype),
        "f": faces,
        "shapedirs": _carry(u, model["shapedirs"], dtype),
        "posedirs": _carry(u, model["posedirs"].reshape(v, 3, 36), dtype),
        "weights": w.astype(dtype),
        "J_regressor": np.concatenate(
            [model["J_regressor"], np.zeros((model["J_regressor"].shape[0], u.shape[0] - v))], axis=1).astype(dtype),
        "kintree_table": model["kintree_table"],
        "upsample": u,
    }
    for key in ("n_shape", "expression_names", "shape_names"):
        if key in model:
            out[key] = model[key]
    if "vertex_part" in model:
        part = model["vertex_part"].astype(np.int64)
        lo = np.full(u.shape[0], np.iinfo(np.int64).max)
        coo = u.tocoo()
        np.minimum.at(lo, coo.row, part[coo.col])
        out["vertex_part"] = lo.astype(np.int8)
    return out


_cache: dict[tuple[str, int, str], dict[str, np.ndarray]] = {}
_cache_lock = threading.Lock()


def subdivide_cached(model: dict[str, np.ndarray], level: int, model_id: str | None = None,
                     dtype: type = np.float32) -> dict[str, np.ndarray]:
    """:func:`subdivide` memoized per (head-model id, level, dtype) for this process."""
    key = (model_id or head_model_id(model), level, np.dtype(dtype).name)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = subdivide(model, level, dtype)
        return _cache[key]
