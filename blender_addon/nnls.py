"""Non-negative least squares in numpy (Blender ships no scipy).

Lawson-Hanson active-set method on the normal equations, so a fixed basis ``A (M,K)`` is factored
once (``G = A^T A``) and each of many right-hand sides (one per frame) costs only K-sized solves.
"""

from __future__ import annotations

import numpy as np


def _solve(g: np.ndarray, h: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(g, h)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(g, h, rcond=None)[0]


def nnls_gram(gram: np.ndarray, h: np.ndarray, *, start: np.ndarray | None = None,
              max_iter: int | None = None, tol: float | None = None) -> np.ndarray:
    """argmin_{x >= 0} 0.5 x^T G x - h^T x for symmetric positive semi-definite ``G (K,K)``, ``h (K,)``
    (i.e. ``min ||Ax - b||`` with ``G = A^T A``, ``h = A^T b``). Returns ``x (K,)``.

    ``start``: a guess of the positive entries (e.g. the previous frame's solution ``> 0``); it
    only changes the speed, not the optimum."""
    g = np.asarray(gram, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    k = h.shape[0]
    scale = max(float(np.abs(np.diag(g)).max(initial=0.0)), 1e-300)
    tol = 1e-10 * scale * max(1.0, float(np.abs(h).max(initial=0.0)) / scale) if tol is None else tol
    max_iter = 3 * k + 10 if max_iter is None else max_iter
    x = np.zeros(k)
    passive = np.zeros(k, dtype=bool) if start is None else np.asarray(start, dtype=bool).copy()
    while passive.any():  # warm start: shrink the guess until its unconstrained solution is positive
        idx = np.flatnonzero(passive)
        s = _solve(g[np.ix_(idx, idx)], h[idx])
        if np.all(s > 0):
            x[idx] = s
            break
        passive[idx[s <= 0]] = False
    for _ in range(max_iter):
        w = h - g @ x
        w[passive] = -np.inf
        j = int(np.argmax(w))
        if w[j] <= tol:
            break
        passive[j] = True
        while True:
            idx = np.flatnonzero(passive)
            s = np.zeros(k)
            s[idx] = _solve(g[np.ix_(idx, idx)], h[idx])
            if np.all(s[idx] > 0):
                x = s
                break
            neg = idx[s[idx] <= 0]
            alpha = np.min(x[neg] / (x[neg] - s[neg]))
            x = x + alpha * (s - x)
            passive &= x > 1e-14 * max(1.0, float(x.max(initial=0.0)))
            x[~passive] = 0.0
            if not passive.any():
                break
    return x


def nnls(a: np.ndarray, b: np.ndarray, *, ridge: float = 0.0) -> np.ndarray:
    """argmin_{x >= 0} ||A x - b||^2 + ridge ||x||^2 for ``A (M,K)``, ``b (M,)`` -> ``x (K,)``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return nnls_gram(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ b)


def nnls_batch(a: np.ndarray, b: np.ndarray, *, ridge: float = 0.0) -> np.ndarray:
    """One NNLS per column of ``b (M,T)`` against a shared ``A (M,K)`` -> ``X (T,K)``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if b.ndim != 2 or b.shape[0] != a.shape[0]:
        raise ValueError(f"b must be ({a.shape[0]},T), got {b.shape}")
    g = a.T @ a + ridge * np.eye(a.shape[1])
    hs = (a.T @ b).T
    out = np.zeros((len(hs), a.shape[1]))
    prev = None
    for t, h in enumerate(hs):  # frames change slowly: warm-start from the previous active set
        out[t] = nnls_gram(g, h, start=prev)
        prev = out[t] > 0
    return out
