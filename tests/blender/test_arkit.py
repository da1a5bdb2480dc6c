"""ARKit-52 scores from the face landmarker land on an ARKit-style rig: the arkit52 map keys them
directly when a track carries them (streamed params, a track file, the track stored on the FLAME
rig), and falls back to the FLAME mapping otherwise."""

from __future__ import annotations

import json

import numpy as np
import rigs
from test_retarget import _armature, _mesh_with_keys, _track, _values

KEYS = ["eyeBlinkLeft", "eyeBlink_R", "jawOpen", "mouthSmileLeft", "tongueOut", "cheekPuff"]


def _scores(frames: int, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    names = ["eyeBlinkLeft", "eyeBlinkRight", "jawOpen", "mouthSmileLeft", "cheekPuff", "browInnerUp"]
    return {n: rng.uniform(0, 1, frames) for n in names}


def test_scores_key_the_rig_directly(ext, clean):
    v, f = rigs.uv_sphere()
    face = _mesh_with_keys(clean, "ARKitFace", v, f, {k: np.full_like(v, 0.01) for k in KEYS})
    arm = _armature(clean, "ARKitRig", {"head": ((0, 0, 0.1), (0, 0, 0.3), 0.0)})
    track = _track(ext, frames=12)
    scores = _scores(12)
    track.arkit_names = list(scores)
    track.arkit = np.stack(list(scores.values()), axis=1)
    ctl = ext("controller")
    rep = ext("bake").bake_mapping(ctl.resolve_map("builtin:arkit52"), track, [arm, face], frame_start=5)
    for key, src in (("eyeBlinkLeft", "eyeBlinkLeft"), ("eyeBlink_R", "eyeBlinkRight"), ("jawOpen", "jawOpen"),
                     ("mouthSmileLeft", "mouthSmileLeft"), ("cheekPuff", "cheekPuff")):
        frames, got = _values(ext, face, key)
        np.testing.assert_allclose(frames, np.arange(5, 17))
        np.testing.assert_allclose(got, scores[src], atol=1e-6, err_msg=key)
    # jawOpen comes from the score, not from the FLAME jaw (2.5 x pitch in the map)
    assert not np.allclose(_values(ext, face, "jawOpen")[1], np.clip(2.5 * track.pose[:, 2, 0], 0, 1))
    # tongueOut is not scored: its FLAME entry has no source in this track, so it is left alone
    assert _values(ext, face, "tongueOut") is None
    assert rep.bones == 1  # the head still follows the FLAME neck and root


def test_without_scores_the_flame_mapping_is_used(ext, clean):
    v, f = rigs.uv_sphere()
    face = _mesh_with_keys(clean, "ARKitFace", v, f, {k: np.full_like(v, 0.01) for k in KEYS})
    track = _track(ext, frames=8)
    assert track.arkit is None
    ext("bake").bake_mapping(ext("controller").resolve_map("builtin:arkit52"), track, [face], frame_start=1)
    np.testing.assert_allclose(_values(ext, face, "jawOpen")[1], np.clip(2.5 * track.pose[:, 2, 0], 0, 1), atol=1e-6)


def test_streamed_params_and_track_files_carry_scores(ext, clean, tmp_path):
    buf = ext("track").TrackBuffer()
    for i in range(4):
        buf.add(i, {"expression": [0.0] * 3, "pose": [[0.0] * 3] * 5, "arkit": {"jawOpen": 0.1 * i, "eyeBlinkLeft": 0.5}})
    t = buf.to_track(expression_names=["a", "b", "c"])
    assert t.arkit_names == ["jawOpen", "eyeBlinkLeft"]
    np.testing.assert_allclose(t.arkit[:, 0], [0.0, 0.1, 0.2, 0.3])
    # a track file written by ffavatar.api.FlameTrack.save: unmeasured names are dropped
    names = ["jawOpen", "tongueOut"]
    meta = {"format": "ffavatar-track", "version": 1, "fps": 15.0, "joints": ["root", "neck", "jaw", "eye_L", "eye_R"],
            "expression_names": ["a"], "arkit_names": names, "arkit_unmeasured": ["tongueOut"]}
    path = tmp_path / "track.npz"
    np.savez(path, expression=np.zeros((3, 1)), pose=np.zeros((3, 5, 3)), cam_rot=np.zeros((3, 3)),
             cam_t=np.zeros((3, 3)), focal=np.ones(3), arkit=np.array([[0.2, 0.0], [0.4, 0.0], [0.6, 0.0]]),
             meta=np.array(json.dumps(meta)))
    loaded = ext("controller").load_track_file(str(path))
    assert loaded.arkit_names == ["jawOpen"]
    np.testing.assert_allclose(loaded.arkit[:, 0], [0.2, 0.4, 0.6])
    # stored on the FLAME rig and read back (retargeting later, from a saved file)
    arm = _armature(clean, "FLAMERig", {"root": ((0, 0, 0), (0, 0, 0.1), 0.0)})
    rig = ext("rig")
    rig.store_track(arm, loaded, 3)
    back, start = rig.load_track(arm)
    assert start == 3 and back.arkit_names == ["jawOpen"]
    np.testing.assert_allclose(back.arkit, loaded.arkit)
