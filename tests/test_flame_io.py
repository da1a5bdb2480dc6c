"""Safe FLAME loading: pickles (plain, Python-2 style, chumpy, scipy.sparse), npz, npy, bad input."""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest
import scipy.sparse

from ffavatar.errors import FlameFileError, LimitExceeded, UnsafePickle
from ffavatar.flame.io import load_model_file, read_file, restricted_loads, validate
from ffavatar_testdata import make_tiny_flame


class _Py2Pickler(pickle._Pickler):
    """Writes bytes and str as Python 2 ``str`` opcodes (BINSTRING), as FLAME's pickles have them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _py2_pickle(obj) -> bytes:
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    return f.getvalue()


def test_plain_numpy_pickle_round_trip(tmp_path, tiny_flame):
    p = tmp_path / "flame.pkl"
    p.write_bytes(pickle.dumps(tiny_flame, protocol=2))
    m = load_model_file(p)
    for k in ("v_template", "shapedirs", "weights", "J_regressor"):
        np.testing.assert_array_equal(m[k], tiny_flame[k])
    assert m["posedirs"].shape == (len(tiny_flame["v_template"]), 3, 36)
    assert int(m["n_shape"]) == 6


def test_python2_style_pickle_with_latin1_strings(tmp_path, tiny_flame):
    data = _py2_pickle(tiny_flame)
    assert pickle.BINUNICODE not in data[:20]  # keys really are py2 str opcodes
    p = tmp_path / "generic_model.pkl"
    p.write_bytes(data)
    m = load_model_file(p)
    np.testing.assert_array_equal(m["v_template"], tiny_flame["v_template"])
    np.testing.assert_array_equal(m["f"], tiny_flame["f"])


def test_npz_and_posedirs_flat_layout(tmp_path, tiny_flame):
    d = dict(tiny_flame)
    d["posedirs"] = d["posedirs"].reshape(-1, 36)  # (V*3, 36) layout
    p = tmp_path / "flame.npz"
    np.savez(p, **d)
    m = load_model_file(p)
    np.testing.assert_array_equal(m["posedirs"], tiny_flame["posedirs"])


def test_scipy_sparse_j_regressor(tmp_path, tiny_flame):
    d = dict(tiny_flame)
    jr = tiny_flame["J_regressor"].copy()
    jr[jr < 1e-3] = 0
    d["J_regressor"] = scipy.sparse.csc_matrix(jr)
    p = tmp_path / "flame.pkl"
    p.write_bytes(pickle.dumps(d, protocol=2))
    np.testing.assert_array_equal(load_model_file(p)["J_regressor"], jr)


@pytest.fixture
def fake_chumpy():
    """A stand-in ``chumpy`` package that exists only while a test writes its pickle."""
    pkg, ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:  # chumpy keeps its array in ``x`` plus bookkeeping attributes
        def __init__(self, x):
            self.x = np.asarray(x)
            self._dirty_vars = set()
            self.label = "ch"

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch.Ch = Ch
    pkg.ch = ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = pkg, ch
    yield Ch
    sys.modules.pop("chumpy", None), sys.modules.pop("chumpy.ch", None)


def test_chumpy_objects_load_without_chumpy(tmp_path, tiny_flame, fake_chumpy):
    d = dict(tiny_flame)
    d["shapedirs"] = fake_chumpy(tiny_flame["shapedirs"])
    d["v_template"] = fake_chumpy(tiny_flame["v_template"])
    d["J_regressor"] = scipy.sparse.csc_matrix(tiny_flame["J_regressor"])
    paths = [tmp_path / f"flame_p{proto}.pkl" for proto in (0, 2)]
    paths[0].write_bytes(pickle.dumps(d, protocol=0))
    paths[1].write_bytes(_py2_pickle(d))
    del sys.modules["chumpy"], sys.modules["chumpy.ch"]  # the loader must not need chumpy
    for p in paths:
        m = load_model_file(p)
        np.testing.assert_array_equal(m["shapedirs"], tiny_flame["shapedirs"])
        np.testing.assert_array_equal(m["v_template"], tiny_flame["v_template"])
        np.testing.assert_array_equal(m["J_regressor"], tiny_flame["J_regressor"])


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_and_not_run(tmp_path, tiny_flame):
    marker = tmp_path / "pwned"
    d = dict(tiny_flame)
    d["v_template"] = _Evil(marker)
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(UnsafePickle, match="system"):
        load_model_file(p)
    assert not marker.exists()
    with pytest.raises(UnsafePickle, match="builtins.eval"):
        restricted_loads(b"cbuiltins\neval\n(S'1+1'\ntR.")


def test_refuses_unknown_numpy_functions(tmp_path):
    with pytest.raises(UnsafePickle, match="numpy.load"):
        restricted_loads(b"cnumpy\nload\n(S'x'\ntR.")


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.pop("shapedirs"), r"lacks \['shapedirs'\]"),
    (lambda d: d.update(weights=d["weights"][:, :4]), "weights.*expected"),
    (lambda d: d.update(v_template=d["v_template"][:, :2]), "v_template.*expected"),
    (lambda d: d.update(f=d["f"] + 10_000), "faces index vertices outside"),
    (lambda d: d.update(J_regressor=d["J_regressor"][:3]), "J_regressor.*expected"),
    (lambda d: d.update(v_template=np.full_like(d["v_template"], np.nan)), "NaN"),
    (lambda d: d.update(n_shape=np.array(99)), "n_shape=99"),
    (lambda d: d.update(lmk_face_idx=np.array([0, 1, 99999])), "another head model"),
])
def test_bad_content_gives_clear_errors(tmp_path, tiny_flame, mutate, match):
    d = dict(tiny_flame)
    mutate(d)
    with pytest.raises(FlameFileError, match=match):
        validate(d)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FlameFileError, match="not found.*missing.pkl"):
        load_model_file(tmp_path / "missing.pkl")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(os.urandom(64) + b"\x00")
    with pytest.raises(FlameFileError):
        load_model_file(junk)
    other = tmp_path / "model.obj"
    other.write_text("v 0 0 0\n")
    with pytest.raises(FlameFileError, match="unknown FLAME file type"):
        load_model_file(other)
    listy = tmp_path / "list.pkl"
    listy.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(FlameFileError, match="not a dict"):
        load_model_file(listy)
    obj_npz = tmp_path / "obj.npz"
    np.savez(obj_npz, v_template=np.array([{"a": 1}], dtype=object))
    with pytest.raises(FlameFileError, match="pickled objects"):
        read_file(obj_npz)


def test_separate_landmark_embeddings(tmp_path, tiny_flame):
    d = {k: v for k, v in tiny_flame.items() if not k.startswith("lmk")}
    model = tmp_path / "flame.npz"
    np.savez(model, **d)
    static = tmp_path / "flame_static_embedding.pkl"
    static.write_bytes(_py2_pickle({"lmk_face_idx": np.array([3, 4]), "lmk_b_coords": np.eye(3)[:2]}))
    m = load_model_file(model, static)
    np.testing.assert_array_equal(m["lmk_face_idx"], [3, 4])
    deca = tmp_path / "landmark_embedding.npy"
    np.save(deca, {"static_lmk_faces_idx": np.array([1]), "static_lmk_bary_coords": np.eye(3)[:1],
                   "full_lmk_faces_idx": np.arange(68)[None], "full_lmk_bary_coords": np.full((1, 68, 3), 1 / 3)},
            allow_pickle=True)
    m = load_model_file(model, deca)
    assert m["lmk_face_idx"].shape == (68,) and m["lmk_b_coords"].shape == (68, 3)
    with pytest.raises(FlameFileError, match="no landmark embedding"):
        load_model_file(model, model)


# ------------------------------------------------------------------ bounds (issue 14: laughs.pkl)
def _laughs(depth: int, width: int = 2) -> bytes:
    """A FLAME-looking pickle of nested *shared* lists: tiny on disk, ``width ** depth`` when expanded."""
    inner: list = []
    for _ in range(depth):
        inner = [inner] * width
    return pickle.dumps({"v_template": inner}, protocol=2)


@pytest.mark.parametrize("depth, width, match", [
    (32, 2, "deeper than"),      # the shape of ../shared/cases/hostile/laughs.pkl (261 bytes)
    (16, 4, "more than"),        # shallow but wide: 4**16 elements
])
def test_shared_list_bomb_is_refused_before_it_grows(tmp_path, depth, width, match):
    data = _laughs(depth, width)
    assert len(data) < 400
    p = tmp_path / "laughs.pkl"
    p.write_bytes(data)
    with pytest.raises(LimitExceeded, match=match) as e:
        load_model_file(p)
    assert "laughs.pkl" in str(e.value)


def test_self_containing_list_and_huge_sparse_shape_are_refused(tmp_path):
    loop: list = []
    loop.append(loop)
    with pytest.raises(FlameFileError, match="contains itself"):
        restricted_loads(pickle.dumps({"f": loop}, protocol=2))
    sparse = scipy.sparse.csc_matrix(np.eye(3))
    sparse._shape = (200_000, 200_000)  # declares 4e10 dense elements
    with pytest.raises(LimitExceeded, match="sparse matrix"):
        restricted_loads(pickle.dumps({"J_regressor": sparse}, protocol=2))


def test_npz_that_unpacks_beyond_the_limit_is_refused(tmp_path, monkeypatch):
    import ffavatar.flame.io as flame_io

    p = tmp_path / "bomb.npz"
    np.savez_compressed(p, v_template=np.zeros(50_000))
    assert p.stat().st_size < 2_000
    monkeypatch.setattr(flame_io, "MAX_FILE_BYTES", 100_000)  # the member unpacks to 400 kB
    with pytest.raises(LimitExceeded, match="bomb.npz unpacks to"):
        read_file(p)


def test_legitimate_shared_arrays_still_load(tmp_path, tiny_flame):
    d = dict(tiny_flame)
    d["extra"] = [d["v_template"]] * 4  # shared references are fine when small
    p = tmp_path / "flame.pkl"
    p.write_bytes(pickle.dumps(d, protocol=2))
    np.testing.assert_array_equal(load_model_file(p)["v_template"], tiny_flame["v_template"])


# ------------------------------------------------------------------ landmark embeddings as distributed
def _deca_like(n_full: int, rng) -> dict:
    """DECA's landmark_embedding.npy structure: numpy static/full entries, *torch tensors* for the
    dynamic contour (79 yaw bins x 17 points), as DECA and VHAP write and read them."""
    import torch

    return {
        "static_lmk_faces_idx": rng.integers(0, 100, 51).astype(np.int64),
        "static_lmk_bary_coords": rng.dirichlet(np.ones(3), 51),
        "dynamic_lmk_faces_idx": torch.from_numpy(rng.integers(0, 100, (79, 17))).long(),
        "dynamic_lmk_bary_coords": torch.from_numpy(rng.dirichlet(np.ones(3), (79, 17))).float(),
        "full_lmk_faces_idx": rng.integers(0, 100, (1, n_full)).astype(np.int64),
        "full_lmk_bary_coords": rng.dirichlet(np.ones(3), (1, n_full)),
    }


@pytest.mark.parametrize("name, n_full", [("landmark_embedding.npy", 68), ("landmark_embedding_with_eyes.npy", 70)])
def test_deca_and_vhap_embeddings_with_torch_tensors_load_as_arrays(tmp_path, tiny_flame, name, n_full):
    rng = np.random.default_rng(3)
    emb = _deca_like(n_full, rng)
    path = tmp_path / name
    np.save(path, emb, allow_pickle=True)
    assert b"_rebuild_tensor_v2" in path.read_bytes()  # the real structure: pickled torch tensors
    raw = read_file(path)
    np.testing.assert_array_equal(raw["dynamic_lmk_faces_idx"], emb["dynamic_lmk_faces_idx"].numpy())
    np.testing.assert_array_equal(raw["dynamic_lmk_bary_coords"], emb["dynamic_lmk_bary_coords"].numpy())
    assert raw["dynamic_lmk_bary_coords"].dtype == np.float32 and raw["dynamic_lmk_faces_idx"].shape == (79, 17)
    model = tmp_path / "flame.npz"
    np.savez(model, **{k: v for k, v in tiny_flame.items() if not k.startswith("lmk")})
    m = load_model_file(model, path)
    np.testing.assert_array_equal(m["lmk_face_idx"], emb["full_lmk_faces_idx"][0])
    np.testing.assert_allclose(m["lmk_b_coords"], emb["full_lmk_bary_coords"][0])


def test_torch_tensor_loading_runs_no_torch_code(tmp_path, monkeypatch):
    import torch
    import torch._utils
    import torch.storage

    def boom(*a, **k):
        raise AssertionError("torch's own unpickling code ran")

    rng = np.random.default_rng(4)
    path = tmp_path / "landmark_embedding.npy"
    np.save(path, _deca_like(68, rng), allow_pickle=True)
    for mod, name in ((torch._utils, "_rebuild_tensor_v2"), (torch.storage, "_load_from_bytes"), (torch, "load")):
        monkeypatch.setattr(mod, name, boom)
    assert read_file(path)["dynamic_lmk_faces_idx"].shape == (79, 17)


def _tensor_pickle(stride=(3, 1), inner_global: bytes | None = None) -> bytes:
    """torch's own tensor pickle, rebuilt from its parts so that one part can be tampered with."""
    import collections

    import torch
    import torch._utils
    import torch.storage

    blob = [a for op, a, _ in __import__("pickletools").genops(pickle.dumps(torch.arange(6), protocol=3))
            if op.name == "BINBYTES"][0]  # the legacy torch.save bytes of the storage
    if inner_global is not None:
        assert b"ctorch\nLongStorage\n" in blob
        blob = blob.replace(b"ctorch\nLongStorage\n", b"c" + inner_global)

    class Storage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (blob,)

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (Storage(), 0, (2, 3), stride, False, collections.OrderedDict())

    return pickle.dumps(Tensor(), protocol=3)


def test_tensor_pickles_are_checked_part_by_part():
    ok = restricted_loads(_tensor_pickle())
    np.testing.assert_array_equal(ok, np.arange(6).reshape(2, 3))
    with pytest.raises(FlameFileError, match="past its storage"):
        restricted_loads(_tensor_pickle(stride=(5, 1)))
    with pytest.raises(UnsafePickle, match="os.system"):
        restricted_loads(_tensor_pickle(inner_global=b"os\nsystem\n"))
    with pytest.raises(UnsafePickle, match="torch._utils._rebuild_parameter"):
        restricted_loads(b"\x80\x02ctorch._utils\n_rebuild_parameter\n)R.")
    with pytest.raises(UnsafePickle, match="torch.load"):
        restricted_loads(b"\x80\x02ctorch\nload\n)R.")


def test_mediapipe_embedding_keeps_landmark_indices(tmp_path, tiny_flame):
    rng = np.random.default_rng(5)
    mp_idx = rng.choice(478, 105, replace=False)
    p = tmp_path / "mediapipe_landmark_embedding.npz"
    np.savez(p, lmk_face_idx=rng.integers(0, 100, 105).astype(np.uint32),
             lmk_b_coords=rng.dirichlet(np.ones(3), 105), landmark_indices=mp_idx)
    model = tmp_path / "flame.npz"
    np.savez(model, **{k: v for k, v in tiny_flame.items() if not k.startswith("lmk")})
    m = load_model_file(model, p)
    assert m["lmk_face_idx"].shape == (105,)
    np.testing.assert_array_equal(m["landmark_indices"], mp_idx)
    np.savez(p, lmk_face_idx=np.arange(105), lmk_b_coords=np.full((105, 3), 1 / 3), landmark_indices=mp_idx + 478)
    with pytest.raises(FlameFileError, match="MediaPipe's 478"):
        load_model_file(model, p)


@pytest.mark.parametrize("as_list", [False, True])
def test_ringnet_dynamic_embedding_is_refused_not_flattened(tmp_path, tiny_flame, as_list):
    rng = np.random.default_rng(6)
    idx, bary = rng.integers(0, 100, (79, 17)), rng.dirichlet(np.ones(3), (79, 17))
    emb = {"lmk_face_idx": list(idx) if as_list else idx, "lmk_b_coords": list(bary) if as_list else bary}
    p = tmp_path / "flame_dynamic_embedding.npy"
    p.write_bytes(b"")
    np.save(p, emb, allow_pickle=True)
    model = tmp_path / "flame.npz"
    np.savez(model, **{k: v for k, v in tiny_flame.items() if not k.startswith("lmk")})
    with pytest.raises(FlameFileError, match=r"flame_dynamic_embedding.npy.*\(79, 17\).*dynamic contour"):
        load_model_file(model, p)
