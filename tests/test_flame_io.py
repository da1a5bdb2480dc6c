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

from ffavatar.errors import FlameFileError, UnsafePickle
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
