"""The procedural demo head: topology, FLAME layout, skinning, blendshapes, landmarks, caching."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components
from smplx.lbs import lbs

from ffavatar.flame import demo_head as dh
from ffavatar.flame.io import load_model_file


@pytest.fixture(scope="module")
def head() -> dict[str, np.ndarray]:
    return dh.build_demo_head()


def _digest(model: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(model):
        h.update(k.encode())
        h.update(str(model[k].dtype).encode() + str(model[k].shape).encode())
        h.update(np.ascontiguousarray(model[k]).tobytes())
    return h.hexdigest()


def _pose(head, shape=None, expr=None, pose=None) -> np.ndarray:
    """Posed vertices (V,3) through smplx.lbs, as FLAME does it."""
    k = head["shapedirs"].shape[2]
    s = int(head["n_shape"])
    betas = torch.zeros(1, k, dtype=torch.float64)
    if shape is not None:
        betas[0, : len(shape)] = torch.as_tensor(shape, dtype=torch.float64)
    if expr is not None:
        betas[0, s: s + len(expr)] = torch.as_tensor(expr, dtype=torch.float64)
    p = torch.zeros(1, 15, dtype=torch.float64)
    if pose is not None:
        p[0] = torch.as_tensor(pose, dtype=torch.float64).reshape(15)
    parents = torch.as_tensor(head["kintree_table"][0].astype(np.int64))
    parents[0] = -1
    v, _ = lbs(betas, p, torch.as_tensor(head["v_template"])[None], torch.as_tensor(head["shapedirs"]),
               torch.as_tensor(head["posedirs"]).reshape(-1, 36).T.contiguous(), torch.as_tensor(head["J_regressor"]),
               parents, torch.as_tensor(head["weights"]))
    return v[0].numpy()


def _expr(head, **values) -> np.ndarray:
    names = list(head["expression_names"])
    e = np.zeros(len(names))
    for name, val in values.items():
        e[names.index(name)] = val
    return e


def _landmarks(head, v: np.ndarray) -> np.ndarray:
    return np.einsum("lkc,lk->lc", v[head["f"][head["lmk_face_idx"]]], head["lmk_b_coords"])


# --- layout ------------------------------------------------------------------------------------


def test_keys_shapes_and_dtypes(head):
    v = head["v_template"]
    n = len(v)
    s, k = int(head["n_shape"]), head["shapedirs"].shape[2]
    assert 5000 <= n <= 7000
    assert v.dtype == np.float64 and v.shape == (n, 3)
    assert head["f"].dtype == np.int64 and head["f"].shape[1] == 3 and head["f"].max() == n - 1
    assert head["shapedirs"].shape == (n, 3, k) and head["shapedirs"].dtype == np.float64
    assert s >= 50 and k - s >= 50
    assert head["n_shape"].shape == () and head["n_shape"].dtype == np.int64
    assert head["shape_names"].shape == (s,) and head["shape_names"].dtype.kind == "U"
    assert head["expression_names"].shape == (k - s,) and head["expression_names"].dtype.kind == "U"
    assert len(set(head["shape_names"])) == s and len(set(head["expression_names"])) == k - s
    assert head["posedirs"].shape == (n, 3, 36) and head["posedirs"].dtype == np.float64
    assert head["J_regressor"].shape == (5, n) and head["weights"].shape == (n, 5)
    np.testing.assert_array_equal(head["kintree_table"], [[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]])
    assert head["kintree_table"].dtype == np.int64
    assert head["lmk_face_idx"].shape == (68,) and head["lmk_face_idx"].dtype == np.int64
    assert head["lmk_b_coords"].shape == (68, 3) and head["lmk_b_coords"].dtype == np.float64
    assert head["vertex_part"].shape == (n,) and head["vertex_part"].dtype == np.int8
    assert set(np.unique(head["vertex_part"])) == {dh.PART_SKIN, dh.PART_EYE_L, dh.PART_EYE_R, dh.PART_MOUTH}
    for name in ("smile_L", "smile_R", "blink_L", "blink_R", "brow_raise_L", "brow_raise_R", "brow_furrow",
                 "pucker", "lip_funnel", "cheek_puff_L", "cheek_puff_R", "nose_wrinkle", "upper_lip_raise",
                 "lower_lip_down", "mouth_left", "mouth_right"):
        assert name in head["expression_names"]
    for name in ("head_width", "head_length", "head_height", "nose_length", "nose_width", "nose_bridge",
                 "chin_forward", "jaw_width", "cheekbones", "brow_ridge", "eye_spacing", "lip_thickness", "ear_size"):
        assert name in head["shape_names"]


def test_deterministic(head):
    assert _digest(dh.build_demo_head()) == _digest(head)


def test_loads_through_the_flame_loader(head, tmp_path):
    model = load_model_file(dh.demo_head_path(tmp_path))
    assert model["v_template"].shape == head["v_template"].shape
    assert int(model["n_shape"]) == int(head["n_shape"])
    np.testing.assert_array_equal(model["vertex_part"], head["vertex_part"])


# --- topology ----------------------------------------------------------------------------------


def test_watertight_manifold_three_spheres(head):
    v, f = head["v_template"], head["f"]
    assert (f[:, 0] != f[:, 1]).all() and (f[:, 1] != f[:, 2]).all() and (f[:, 2] != f[:, 0]).all()
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    _, counts = np.unique(np.sort(e, axis=1), axis=0, return_counts=True)
    assert (counts == 2).all(), "every undirected edge must be in exactly two faces"
    _, dcounts = np.unique(e, axis=0, return_counts=True)
    assert (dcounts == 1).all(), "faces must be consistently oriented (each directed edge once)"
    area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    assert area.min() > 1e-9, "degenerate triangle"
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(len(v), len(v)))
    n_comp, label = connected_components(adj, directed=False)
    assert n_comp == 3
    parts = head["vertex_part"]
    for c in range(n_comp):
        fc = f[label[f[:, 0]] == c]
        nv = (label == c).sum()
        ne = len(np.unique(np.sort(np.concatenate([fc[:, [0, 1]], fc[:, [1, 2]], fc[:, [2, 0]]]), 1), axis=0))
        assert nv - ne + len(fc) == 2, "each component must be a topological sphere"
        tri = v[fc]
        volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
        assert volume > 0, "faces must point outwards"
        comp_parts = set(np.unique(parts[label == c]))
        assert comp_parts in ({dh.PART_SKIN, dh.PART_MOUTH}, {dh.PART_EYE_L}, {dh.PART_EYE_R})


def test_size_and_frame(head):
    v, parts = head["v_template"], head["vertex_part"]
    skin = v[parts == dh.PART_SKIN]
    chin = skin[(np.abs(skin[:, 0]) < 0.01) & (skin[:, 2] > 0.06)][:, 1].min()
    crown = skin[:, 1].max()
    assert 0.18 < crown - chin < 0.23
    width = 2 * np.abs(skin[(skin[:, 1] > 0.03) & (skin[:, 1] < 0.06), 0]).max()  # above the ears
    assert 0.13 < width < 0.17
    assert np.abs(v.mean(0)).max() < 0.05
    nose_tip = skin[np.argmax(skin[:, 2])]
    assert abs(nose_tip[0]) < 0.005 and -0.04 < nose_tip[1] < 0.0  # the face looks along +Z
    assert v[parts == dh.PART_EYE_L][:, 0].min() > 0 > v[parts == dh.PART_EYE_R][:, 0].max()
    assert skin[:, 1].min() < chin - 0.05  # a neck below the chin


def test_mouth_pocket_is_behind_the_lips(head):
    v, parts = head["v_template"], head["vertex_part"]
    mouth = v[parts == dh.PART_MOUTH]
    assert len(mouth) > 50
    assert np.abs(mouth[:, 0]).max() < dh.MOUTH_HALF_WIDTH + 0.002
    assert mouth[:, 2].max() < dh.MOUTH_CENTER[2] and mouth[:, 2].min() > dh.MOUTH_CENTER[2] - 0.045


# --- skinning and joints -----------------------------------------------------------------------


def test_weights_and_joints(head):
    w, jr, v, parts = head["weights"], head["J_regressor"], head["v_template"], head["vertex_part"]
    assert (w >= 0).all() and np.allclose(w.sum(1), 1)
    assert (jr >= 0).all() and np.allclose(jr.sum(1), 1)
    np.testing.assert_allclose(jr @ v, dh.JOINTS, atol=1e-4)
    for code, joint in ((dh.PART_EYE_L, 3), (dh.PART_EYE_R, 4)):
        np.testing.assert_array_equal(w[parts == code], np.eye(5)[[joint] * (parts == code).sum()])
        r = np.linalg.norm(v[parts == code] - dh.JOINTS[joint], axis=1)
        np.testing.assert_allclose(r, dh.EYE_RADIUS, rtol=1e-9)  # eyeball centred on its joint
    skin = parts == dh.PART_SKIN
    assert w[skin][:, 3:].max() == 0
    chin = np.argmin(np.where(skin & (np.abs(v[:, 0]) < 0.005) & (v[:, 2] > 0.06), v[:, 1], np.inf))
    assert w[chin, 2] > 0.9
    crown = np.argmax(np.where(skin, v[:, 1], -np.inf))
    assert w[crown, 1] == 1.0
    bottom = np.argmin(v[:, 1])
    assert w[bottom, 0] > 0.99
    # joints follow the surface under identity changes
    shaped = v + head["shapedirs"][:, :, list(head["shape_names"]).index("eye_spacing")] * 2
    moved = jr @ shaped - jr @ v
    assert moved[3, 0] > 0.003 and moved[4, 0] < -0.003


def test_jaw_rotation_opens_the_mouth(head):
    rest = _pose(head)
    pose = np.zeros(15)
    pose[6] = 0.3  # jaw about +X
    opened = _pose(head, pose=pose)
    lm0, lm1 = _landmarks(head, rest), _landmarks(head, opened)
    gap0 = np.linalg.norm(lm0[62] - lm0[66])
    gap1 = np.linalg.norm(lm1[62] - lm1[66])
    assert gap0 < 0.001 and gap1 - gap0 > 0.005
    assert lm1[66, 1] < lm0[66, 1] - 0.005 and abs(lm1[62, 1] - lm0[62, 1]) < 0.002
    assert lm1[8, 1] < lm0[8, 1] - 0.01  # the chin drops
    np.testing.assert_allclose(lm1[27:36], lm0[27:36], atol=1e-4)  # the nose stays
    # the mouth cavity opens: its floor moves down, away from its roof
    mouth = head["vertex_part"] == dh.PART_MOUTH
    spread0 = np.ptp(rest[mouth, 1])
    spread1 = np.ptp(opened[mouth, 1])
    assert spread1 > spread0 + 0.01


def test_eye_rotation_moves_only_the_eyeball(head):
    rest = _pose(head)
    pose = np.zeros(15)
    pose[3 * 3 + 1] = 0.4  # eye_L about +Y
    moved = _pose(head, pose=pose)
    d = np.linalg.norm(moved - rest, axis=1)
    parts = head["vertex_part"]
    assert d[parts == dh.PART_EYE_L].max() > 0.003
    assert d[parts != dh.PART_EYE_L].max() < 1e-12
    r = np.linalg.norm(moved[parts == dh.PART_EYE_L] - dh.JOINTS[3], axis=1)
    np.testing.assert_allclose(r, dh.EYE_RADIUS, rtol=1e-9)
    front = np.argmax(np.where(parts == dh.PART_EYE_L, rest[:, 2], -np.inf))  # the pupil looks to +X now
    assert moved[front, 0] - rest[front, 0] > 0.003


# --- blendshapes -------------------------------------------------------------------------------


def test_blink_closes_the_left_upper_lid(head):
    v, parts = head["v_template"], head["vertex_part"]
    q = v - dh.EYE_CENTERS[0]
    r = np.linalg.norm(q, axis=1)
    upper_lid = (parts == dh.PART_SKIN) & (r < dh.EYE_RADIUS + 0.004) & (q[:, 2] > 0.006) & (q[:, 1] > 0.006) \
        & (np.abs(q[:, 0]) < 0.006)
    assert upper_lid.sum() >= 3
    closed = _pose(head, expr=_expr(head, blink_L=2.0))
    dy = closed[:, 1] - v[:, 1]
    assert dy[upper_lid].max() < -0.002
    right = v[:, 0] < 0
    assert np.abs(closed[right] - v[right]).max() < 1e-12
    eyeball = parts == dh.PART_EYE_L
    assert np.abs(closed[eyeball] - v[eyeball]).max() < 1e-12
    # closed lids still cover the eyeball instead of sinking into it
    lid = (parts == dh.PART_SKIN) & (r > dh.EYE_RADIUS) & (r < dh.EYE_RADIUS + 0.003)
    covering = lid & (closed[:, 2] > dh.EYE_CENTERS[0, 2] + 0.009) & (np.abs(q[:, 0]) < 0.004)
    assert (covering & (closed[:, 1] < dh.EYE_CENTERS[0, 1] + 0.002)).any()  # the upper lid came down
    assert (np.linalg.norm(closed[covering] - dh.EYE_CENTERS[0], axis=1) > dh.EYE_RADIUS).all()


def test_mouth_expressions_have_their_meaning(head):
    v = head["v_template"]
    lm0 = _landmarks(head, v)
    smile = _landmarks(head, _pose(head, expr=_expr(head, smile_L=1.0)))
    assert smile[54, 1] - lm0[54, 1] > 0.002      # left corner (subject's left = +X) rises
    assert abs(smile[48, 1] - lm0[48, 1]) < 0.0005  # right corner stays
    down = _landmarks(head, _pose(head, expr=_expr(head, lower_lip_down=1.0)))
    assert down[66, 1] - lm0[66, 1] < -0.002 and abs(down[62, 1] - lm0[62, 1]) < 0.0005
    pucker = _landmarks(head, _pose(head, expr=_expr(head, pucker=1.0)))
    assert pucker[51, 2] - lm0[51, 2] > 0.002
    assert np.linalg.norm(pucker[48] - pucker[54]) < np.linalg.norm(lm0[48] - lm0[54]) - 0.002


def test_components_are_smooth_and_normalized(head):
    v, f, sd = head["v_template"], head["f"], head["shapedirs"]
    e = np.unique(np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1), axis=0)
    length = np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1)
    strain = np.linalg.norm(sd[e[:, 0]] - sd[e[:, 1]], axis=1) / length[:, None]  # (E, K)
    assert strain.max() < 1.0, "a component tears the surface"
    size = np.linalg.norm(sd, axis=1).max(0)  # per component
    assert size.min() > 1.5e-4 and size.max() < 0.008
    s = int(head["n_shape"])
    assert np.median(size[:s]) < 0.004 and np.median(size[s:]) < 0.005
    eyes = np.isin(head["vertex_part"], [dh.PART_EYE_L, dh.PART_EYE_R])
    assert np.abs(sd[eyes][:, :, s:]).max() == 0  # expressions never move the eyeballs
    for code in (dh.PART_EYE_L, dh.PART_EYE_R):  # identity moves them rigidly
        block = sd[head["vertex_part"] == code][:, :, :s]
        assert np.abs(block - block[:1]).max() < 1e-12


def test_extreme_coefficients_stay_bounded(head):
    rng = np.random.default_rng(0)
    s = int(head["n_shape"])
    e = head["shapedirs"].shape[2] - s
    for _ in range(2):
        pose = rng.normal(size=15) * 0.2
        v = _pose(head, shape=3 * rng.normal(size=s), expr=3 * rng.normal(size=e), pose=pose)
        assert np.isfinite(v).all()
        d = np.linalg.norm(v - _pose(head, pose=pose), axis=1)
        assert d.max() < 0.08 and np.sqrt((d ** 2).mean()) < 0.025
    assert np.abs(head["posedirs"]).max() < 0.02


def test_pose_correctives_are_small_and_local(head):
    pd = head["posedirs"]
    assert np.abs(pd).max() > 0 and np.abs(pd).max() < 0.02
    pose = np.zeros(15)
    pose[3] = 0.4  # nod about +X at the neck
    with_pd = _pose(head, pose=pose)
    no_pd = dict(head, posedirs=np.zeros_like(pd))
    diff = np.linalg.norm(with_pd - _pose(no_pd, pose=pose), axis=1)
    assert 0.001 < diff.max() < 0.01


# --- landmarks ---------------------------------------------------------------------------------


def test_landmarks_on_the_face_in_ibug_order(head):
    assert (head["lmk_b_coords"] >= -1e-9).all() and np.allclose(head["lmk_b_coords"].sum(1), 1)
    parts = head["vertex_part"][head["f"][head["lmk_face_idx"]]]
    assert (parts == dh.PART_SKIN).all()
    lm = _landmarks(head, head["v_template"])
    assert (lm[:17, 2] > -0.01).all() and (lm[17:, 2] > 0.06).all()
    assert (np.abs(lm[:, 0]) < 0.075).all() and (lm[:, 1] > -0.1).all() and (lm[:, 1] < 0.06).all()
    assert (np.diff(lm[:17, 0]) > 0).all()  # jaw contour from the subject's right (-X) to left
    assert np.argmin(lm[:17, 1]) in (7, 8, 9)
    eyes_y = lm[36:48, 1].mean()
    assert eyes_y > lm[30, 1] > lm[48:68, 1].mean() > lm[8, 1]
    assert lm[17:27, 1].min() > lm[36:48, 1].max()  # brows above the eyes
    assert lm[36:42, 0].max() < 0 < lm[42:48, 0].min()  # right eye at -X, left at +X
    assert lm[17:22, 0].max() < 0 < lm[22:27, 0].min()
    assert lm[48, 0] < lm[51, 0] < lm[54, 0] and lm[51, 1] > lm[57, 1]
    assert lm[37, 1] > lm[41, 1] and lm[43, 1] > lm[47, 1]  # upper lids above lower lids
    assert lm[30, 2] == lm[:, 2].max()  # nose tip in front
    mirror = np.array(list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30, 35, 34, 33, 32, 31]
                      + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
                      + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65])
    np.testing.assert_allclose(lm[mirror] * [-1, 1, 1], lm, atol=0.0025)


# --- cache -------------------------------------------------------------------------------------


def test_demo_head_path_caches_atomically(head, tmp_path, monkeypatch):
    path = dh.demo_head_path(tmp_path / "cache")
    assert path.parent == tmp_path / "cache" and path.name.startswith(f"demo_head_v{dh.DEMO_HEAD_VERSION}_")
    stamp = path.stat().st_mtime_ns
    assert dh.demo_head_path(tmp_path / "cache") == path
    assert path.stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left
    with np.load(path, allow_pickle=False) as z:
        loaded = {k: z[k] for k in z.files}
    assert _digest(loaded) == _digest(head)
    monkeypatch.setenv("FFAVATAR_CACHE", str(path.parent))
    assert dh.demo_head_path() == path
