"""Spherical harmonics: 3DGS/gsplat conventions, checked against scipy's complex SH and gsplat."""

import math

import numpy as np
import pytest
import torch
from scipy.special import sph_harm_y

from ffavatar.errors import InvalidInput
from ffavatar.gaussians import SH_C0
from ffavatar.render.sh import eval_sh, sh_basis, sh_to_rgb


def _random_dirs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64)


def _reference_basis(degree, dirs):
    """3DGS basis from scipy's complex SH (which carries the Condon-Shortley phase (-1)^m).

    3DGS keeps that phase in its real basis: m > 0 -> sqrt2 Re Y_l^m, m < 0 -> sqrt2 Im Y_l^|m|,
    m = 0 -> Y_l^0; index l*l + l + m.
    """
    d = dirs.numpy() / np.linalg.norm(dirs.numpy(), axis=-1, keepdims=True)
    theta = np.arccos(np.clip(d[:, 2], -1, 1))
    phi = np.mod(np.arctan2(d[:, 1], d[:, 0]), 2 * np.pi)
    cols = []
    for l in range(degree + 1):
        for m in range(-l, l + 1):
            y = sph_harm_y(l, abs(m), theta, phi)
            if m > 0:
                cols.append(math.sqrt(2) * y.real)
            elif m < 0:
                cols.append(math.sqrt(2) * y.imag)
            else:
                cols.append(y.real)
    return torch.from_numpy(np.stack(cols, axis=-1))


def test_degree0_is_c0_times_dc():
    dirs = _random_dirs(50)
    sh = torch.randn(50, 1, 3, dtype=torch.float64)
    out = eval_sh(0, sh, dirs)
    torch.testing.assert_close(out, SH_C0 * sh[:, 0, :], rtol=0, atol=1e-15)
    assert SH_C0 == pytest.approx(1 / (2 * math.sqrt(math.pi)), abs=1e-16)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_basis_matches_scipy_complex_sh(degree):
    dirs = _random_dirs(200, seed=degree)
    ours = sh_basis(degree, dirs / dirs.norm(dim=-1, keepdim=True))
    ref = _reference_basis(degree, dirs)
    assert ours.shape == (200, (degree + 1) ** 2)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


def test_known_values_on_axes():
    # Degree 1 on +x: only index 3 (m=+1) is non-zero and it is negative (the 3DGS sign).
    b = sh_basis(1, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64))
    c1 = math.sqrt(3 / (4 * math.pi))
    expected = torch.tensor([[SH_C0, 0, 0, -c1], [SH_C0, -c1, 0, 0], [SH_C0, 0, c1, 0]], dtype=torch.float64)
    torch.testing.assert_close(b, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_eval_matches_sum_and_normalizes_dirs(degree):
    dirs = _random_dirs(64, seed=10 + degree)
    sh = torch.randn(64, 16, 3, dtype=torch.float64)  # K larger than needed: extra bands ignored
    out = eval_sh(degree, sh, dirs * 7.5)  # unnormalized input
    nb = (degree + 1) ** 2
    ref = torch.einsum("nk,nkc->nc", _reference_basis(degree, dirs), sh[:, :nb])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_matches_gsplat_torch_reference():
    impl = pytest.importorskip("gsplat.cuda._torch_impl")
    dirs = _random_dirs(100, seed=3).float()
    sh = torch.randn(100, 16, 3)
    for degree in range(4):
        ref = impl._spherical_harmonics(degree, dirs, sh)
        torch.testing.assert_close(eval_sh(degree, sh, dirs), ref, rtol=1e-5, atol=1e-5)


def test_broadcasting_and_rgb_clamp():
    sh = torch.randn(5, 9, 3, dtype=torch.float64)
    dirs = _random_dirs(2 * 5).reshape(2, 5, 3)
    out = eval_sh(2, sh, dirs)
    assert out.shape == (2, 5, 3)
    torch.testing.assert_close(out[1], eval_sh(2, sh, dirs[1]))
    rgb = sh_to_rgb(2, sh, dirs)
    torch.testing.assert_close(rgb, (out + 0.5).clamp_min(0))
    dark = torch.zeros(1, 1, 3, dtype=torch.float64)
    dark[0, 0] = -10.0
    assert torch.equal(sh_to_rgb(0, dark, dirs[0, :1]), torch.zeros(1, 3, dtype=torch.float64))


def test_gradcheck():
    sh = torch.randn(6, 16, 3, dtype=torch.float64, requires_grad=True)
    dirs = _random_dirs(6, seed=5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s, d: eval_sh(3, s, d), (sh, dirs))


def test_errors():
    with pytest.raises(InvalidInput, match="degree"):
        eval_sh(4, torch.zeros(2, 25, 3), torch.ones(2, 3))
    with pytest.raises(InvalidInput, match="K>=9"):
        eval_sh(2, torch.zeros(2, 4, 3), torch.ones(2, 3))
