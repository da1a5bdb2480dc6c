"""Real spherical harmonics up to degree 3, in the convention of 3DGS and gsplat.

Basis index ``l*l + l + m`` (m = -l..l). The 3DGS basis is the textbook real SH
(``Y_lm`` with ``sin(|m| phi)`` for m < 0, ``cos(m phi)`` for m > 0) times the Condon-Shortley
sign ``(-1)**m``, i.e. odd-|m| functions are negated: ``Y_1 = (-c1 y, c1 z, -c1 x)``.
Directions are normalized here, so the polynomials below may use ``x^2 + y^2 + z^2 = 1``.
View directions follow gsplat: from the camera center to the Gaussian (``means - campos``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ffavatar.errors import InvalidInput

MAX_SH_DEGREE = 3


def _norm(l: int, m: int) -> float:
    """Real-SH normalization sqrt((2l+1)/(4 pi) (l-|m|)!/(l+|m|)!), times sqrt(2) for m != 0."""
    a = abs(m)
    k = (2 * l + 1) / (4 * math.pi) * math.factorial(l - a) / math.factorial(l + a)
    return math.sqrt(k) * (math.sqrt(2.0) if m else 1.0)


# Basis (l, m) = N_lm * (-1)^m * Q_l^|m|(z) * (Re | Im)((x + iy)^|m|), with Re for m > 0, Im for
# m < 0, where Q_l^m(z) = P_l^m(z) / sin^m(theta) is the Legendre part without the CS phase:
#   l=1: Q11 = 1, Q10 = z
#   l=2: Q22 = 3, Q21 = 3z, Q20 = (3z^2 - 1)/2
#   l=3: Q33 = 15, Q32 = 15z, Q31 = 3/2 (5z^2 - 1), Q30 = z(5z^2 - 3)/2
# The constants below fold N_lm and the numeric factor of Q together.
_C1 = _norm(1, 1)
_C2 = (3 * _norm(2, 2), 3 * _norm(2, 1), 0.5 * _norm(2, 0))
_C3 = (15 * _norm(3, 3), 15 * _norm(3, 2), 1.5 * _norm(3, 1), 0.5 * _norm(3, 0))


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Basis values (..., (degree+1)**2) at unit directions dirs (..., 3)."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise InvalidInput(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    out = [torch.full_like(dirs[..., 0], _norm(0, 0))]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        # (x + iy)^2 = (x^2 - y^2) + i (2xy)
        re2, im2 = x * x - y * y, 2 * x * y
        z2 = z * z
        out += [
            _C2[0] * im2,
            -_C2[1] * z * y,
            _C2[2] * (3 * z2 - 1),
            -_C2[1] * z * x,
            _C2[0] * re2,
        ]
    if degree >= 3:
        # (x + iy)^3 = (x^3 - 3xy^2) + i (3x^2 y - y^3)
        re3, im3 = x * re2 - y * im2, x * im2 + y * re2
        p31 = 5 * z2 - 1
        out += [
            -_C3[0] * im3,
            _C3[1] * z * im2,
            -_C3[2] * p31 * y,
            _C3[3] * z * (5 * z2 - 3),
            -_C3[2] * p31 * x,
            _C3[1] * z * re2,
            -_C3[0] * re3,
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, sh: Tensor, dirs: Tensor) -> Tensor:
    """Raw SH sum: sh (..., K, 3) with K >= (degree+1)**2, dirs (..., 3) (any length) -> (..., 3).

    Only the first (degree+1)**2 coefficients are used; leading dims broadcast.
    """
    nb = (degree + 1) ** 2
    if sh.ndim < 2 or sh.shape[-1] != 3 or sh.shape[-2] < nb:
        raise InvalidInput(f"eval_sh(degree={degree}) needs sh (..., K>={nb}, 3), got {tuple(sh.shape)}")
    if dirs.shape[-1] != 3:
        raise InvalidInput(f"eval_sh needs dirs (..., 3), got {tuple(dirs.shape)}")
    basis = sh_basis(degree, F.normalize(dirs, dim=-1))
    return (basis[..., :, None] * sh[..., :nb, :]).sum(dim=-2)


def sh_to_rgb(degree: int, sh: Tensor, dirs: Tensor) -> Tensor:
    """View-dependent color as gsplat computes it: ``clamp_min(eval_sh + 0.5, 0)``, shape (..., 3)."""
    return (eval_sh(degree, sh, dirs) + 0.5).clamp_min(0.0)
