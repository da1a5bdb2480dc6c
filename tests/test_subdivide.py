"""Subdivision carries FLAME attributes so dense points animate exactly like the surface."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffavatar.errors import InvalidInput
from ffavatar.flame import FlameModel
from ffavatar.flame.io import validate
from ffavatar.flame.subdivide import subdivide, subdivide_cached, upsample_matrix


def _edges(f):
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    return np.unique(e, axis=0, return_counts=True)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_counts_topology_and_exact_originals(tiny_flame, level):
    m = validate(tiny_flame)
    d = subdivide(m, level)
    v, f = len(m["v_template"]), len(m["f"])
    n_edges = len(_edges(m["f"])[0])
    expected_v = v if level == 0 else v + n_edges if level == 1 else None
    if expected_v is not None:
        assert len(d["v_template"]) == expected_v
    assert len(d["f"]) == f * 4 ** level
    _, counts = _edges(d["f"])
    assert (counts == 2).all()  # still a closed manifold
    np.testing.assert_array_equal(d["v_template"][:v], m["v_template"])
    np.testing.assert_array_equal(d["shapedirs"][:v], m["shapedirs"])
    np.testing.assert_allclose(d["weights"].sum(1), 1, atol=1e-12)
    assert d["upsample"].shape == (len(d["v_template"]), v)
    np.testing.assert_allclose(np.asarray(d["upsample"].sum(1)).ravel(), 1)
    np.testing.assert_allclose(d["J_regressor"] @ d["v_template"], m["J_regressor"] @ m["v_template"], atol=1e-14)


def test_midpoints_are_edge_averages(tiny_flame):
    m = validate(tiny_flame)
    u, faces = upsample_matrix(m["f"], len(m["v_template"]), 1)
    d = subdivide(m, 1)
    edges, _ = _edges(m["f"])
    v = len(m["v_template"])
    np.testing.assert_allclose(d["v_template"][v:], m["v_template"][edges].mean(1))
    np.testing.assert_allclose(d["posedirs"][v:], m["posedirs"][edges].mean(1))


def test_posing_subdivided_equals_subdividing_posed(tiny_flame):
    m = validate(tiny_flame)
    base = FlameModel(m, dtype=torch.float64)
    for level in (1, 2):
        d = subdivide(m, level)
        dense = FlameModel(d, model_id=base.model_id, dtype=torch.float64)
        rng = np.random.default_rng(level)
        kw = dict(shape=torch.as_tensor(rng.normal(size=(2, 6))), expression=torch.as_tensor(rng.normal(size=(2, 4))),
                  pose=torch.as_tensor(rng.normal(size=(2, 5, 3)) * 0.3))
        coarse, fine = base(**kw).vertices, dense(**kw).vertices
        v = coarse.shape[1]
        torch.testing.assert_close(fine[:, :v], coarse, atol=1e-12, rtol=0)
        # new points follow the posed surface: close to the same linear combination of posed vertices
        u = torch.as_tensor(d["upsample"].toarray())
        gap = (fine - torch.einsum("nv,bvc->bnc", u, coarse)).norm(dim=-1)
        assert gap.max() < 5e-3 and gap.mean() < 5e-4  # metres: a 0.1 m head, 2 cm edges, posed by 0.3 rad


def test_parts_levels_and_cache(tiny_flame):
    m = validate({**tiny_flame, "vertex_part": (np.arange(len(tiny_flame["v_template"])) % 2).astype(np.int8)})
    d = subdivide(m, 1)
    assert set(np.unique(d["vertex_part"])) <= {0, 1}
    with pytest.raises(InvalidInput, match="level"):
        subdivide(m, 7)
    a = subdivide_cached(m, 1)
    assert subdivide_cached(m, 1) is a and a["v_template"].dtype == np.float32
