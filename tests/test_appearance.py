"""Seeded synthetic appearance of the demo head."""

from __future__ import annotations

import numpy as np
import pytest

from ffavatar.errors import InvalidInput
from ffavatar.flame import demo_head as dh
from ffavatar.flame.appearance import Appearance


@pytest.fixture(scope="module")
def head() -> dict[str, np.ndarray]:
    return dh.build_demo_head()


def _colors(head, seed: int) -> np.ndarray:
    return Appearance.from_seed(seed).colors(head["v_template"], head["vertex_part"])


def _near(v: np.ndarray, point, k: int = 5) -> np.ndarray:
    return np.argsort(np.linalg.norm(v - np.asarray(point), axis=1))[:k]


def test_deterministic_and_in_range(head):
    a, b = _colors(head, 7), _colors(head, 7)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (len(head["v_template"]), 3)
    for seed in range(20):
        c = _colors(head, seed)
        assert np.isfinite(c).all() and c.min() >= 0 and c.max() <= 1


def test_seeds_give_distinct_identities(head):
    cols = np.stack([_colors(head, s) for s in range(12)])
    for i in range(len(cols) - 1):
        assert np.abs(cols[i] - cols[i + 1]).mean() > 0.02
    skins = np.array([Appearance.from_seed(s).skin for s in range(60)])
    lum = skins.mean(1)
    assert lum.max() - lum.min() > 0.45  # from light to dark skin
    assert (lum < 0.4).sum() >= 5 and (lum > 0.7).sum() >= 5


def test_eyes_have_white_sclera_and_dark_pupil(head):
    v, parts = head["v_template"], head["vertex_part"]
    for seed in range(10):
        c = _colors(head, seed)
        for code, eye in ((dh.PART_EYE_L, 0), (dh.PART_EYE_R, 1)):
            m = parts == code
            d = v[m] - dh.EYE_CENTERS[eye]
            ang = np.degrees(np.arccos(d[:, 2] / np.linalg.norm(d, axis=1)))
            sclera = c[m][(ang > 40) & (ang < 90)]
            assert sclera.mean() > 0.75 and sclera.min() > 0.6
            assert c[m][ang < 6].max() < 0.1  # pupil


def test_hair_and_skin_differ(head):
    v, parts = head["v_template"], head["vertex_part"]
    crown = _near(v, (0, 0.12, -0.01))
    cheek = _near(v, (0.045, -0.02, 0.075))
    distinct = 0
    for seed in range(50):
        a = Appearance.from_seed(seed)
        c = a.colors(v, parts)
        if a.bald:
            np.testing.assert_allclose(c[crown].mean(0), a.skin, atol=0.12)
            continue
        distinct += np.linalg.norm(c[crown].mean(0) - c[cheek].mean(0)) > 0.15
    assert distinct >= 40
    # the face itself is never covered by hair
    a = next(Appearance.from_seed(s) for s in range(50) if not Appearance.from_seed(s).bald)
    face = parts == dh.PART_SKIN
    face &= (v[:, 2] > 0.06) & (v[:, 1] < 0.03) & (v[:, 1] > -0.09)
    assert a.hair_weight(v[face]).max() < 0.05


def test_lips_mouth_and_lids(head):
    v, parts = head["v_template"], head["vertex_part"]
    for seed in range(10):
        a = Appearance.from_seed(seed)
        c = a.colors(v, parts)
        lip = _near(v, (0, -0.054, 0.099), 3)
        chin = _near(v, (0, -0.08, 0.09), 3)
        assert np.linalg.norm(c[lip].mean(0) - c[chin].mean(0)) > 0.05
        assert (c[lip].mean(0)[0] - c[lip].mean(0)[2]) > 0.05  # lips are reddish
        mouth = parts == dh.PART_MOUTH
        deep = mouth & (v[:, 2] < dh.MOUTH_CENTER[2] - 0.02)
        assert c[deep].mean() < 0.25 and c[deep].mean() < c[chin].mean()
        teeth = mouth & (np.abs(v[:, 0]) < 0.01) & (v[:, 2] > dh.MOUTH_CENTER[2] - 0.004) \
            & (v[:, 2] < dh.MOUTH_CENTER[2] - 0.001)
        assert teeth.any() and c[teeth].mean() > 0.6


def test_position_based_so_subdivision_agrees(head):
    """Edge midpoints (as a subdivided mesh has them) get colours consistent with their edge."""
    v, f, parts = head["v_template"], head["f"], head["vertex_part"]
    e = np.unique(np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1), axis=0)
    e = e[parts[e[:, 0]] == parts[e[:, 1]]]
    a = Appearance.from_seed(3)
    c = a.colors(v, parts)
    mid = a.colors(0.5 * (v[e[:, 0]] + v[e[:, 1]]), parts[e[:, 0]])
    err = np.abs(mid - 0.5 * (c[e[:, 0]] + c[e[:, 1]])).max(1)
    assert np.median(err) < 0.01 and np.quantile(err, 0.95) < 0.08


def test_rejects_bad_input(head):
    a = Appearance.from_seed(0)
    with pytest.raises(InvalidInput):
        a.colors(np.zeros((4, 2)), np.zeros(4, np.int8))
    with pytest.raises(InvalidInput):
        a.colors(np.zeros((4, 3)), np.zeros(5, np.int8))
    with pytest.raises(InvalidInput):
        Appearance.from_seed(1.5)
