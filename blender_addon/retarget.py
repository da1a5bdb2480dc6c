"""Retarget maps: FLAME channels -> a target rig's shape keys and bones (no bpy).

A map is a user-editable JSON file::

    {"format": "ffavatar-retarget", "version": 1, "name": "ARKit 52",
     "shape_keys": [
        {"target": "jawOpen", "sources": [{"pose": "jaw", "axis": "x", "weight": 3.0}],
         "min": 0.0, "max": 1.0},
        {"target": "mouthSmileLeft", "sources": [{"expr": "smile_L", "weight": 1.0}], "min": 0.0},
        {"all_expressions": true}],
     "bones": [
        {"target": "jaw", "source": "jaw", "scale": 1.0, "axes": ["x", "y", "z"], "space": "world"}]}

Sources: ``{"expr": name}`` (an expression coefficient, name fuzzy-matched, or ``"expr_index": i``)
or ``{"pose": joint, "axis": "x"|"y"|"z"}`` (a component of the joint's axis-angle in FLAME's head
frame: x = pitch, positive opens the jaw / looks down; y = yaw, positive turns toward the
subject's left; z = roll). A shape key's value is ``clamp(offset + sum(weight * source), min, max)``
(no clamp where ``min``/``max`` are absent). ``{"all_expressions": true}`` maps every expression
to the shape key of the same name with weight 1 (the FLAME rig itself).

ARKit scores: with ``"arkit_scores": true`` at the top level, a track that carries the face
landmarker's ARKit-52 scores keys every target shape key whose name matches a scored ARKit name
straight from the score (clamped to 0..1); that entry's FLAME sources are then not used. Names the
track does not score (``tongueOut``) and tracks without scores fall back to the entries' sources.

Bones: the FLAME joint's rotation vector, with components re-ordered/negated by ``axes`` (output
component i = the signed FLAME component named by ``axes[i]``) and multiplied by ``scale``, is
either a world-space rotation (``"space": "world"``, the default: FLAME's head frame is mapped to
Blender's world, then into the target bone's rest frame, so any bone roll works) or used as the
bone's local rotation vector as is (``"space": "local"``). Several entries on one bone compose in
file order. Target names are matched fuzzily (``names.match``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .names import match
from .rotations import axis_angle_to_matrix, matrix_to_axis_angle, to_blender

FORMAT = "ffavatar-retarget"
VERSION = 1
_AXES = {"x": 0, "y": 1, "z": 2}


class MappingError(ValueError):
    """A retarget map file is malformed; the message names the entry and the fix."""


@dataclass
class Retargeted:
    """Result of :func:`evaluate`: values per matched target and what was skipped."""

    shape_keys: dict[str, np.ndarray] = field(default_factory=dict)   # target key -> (T,)
    bones: dict[str, np.ndarray] = field(default_factory=dict)        # target bone -> (T,3) local axis-angle
    skipped: list[str] = field(default_factory=list)


def _check_source(src: dict, where: str) -> None:
    if not isinstance(src, dict):
        raise MappingError(f"{where}: a source must be an object like {{'expr': 'smile_L'}}")
    if ("expr" in src) + ("expr_index" in src) + ("pose" in src) != 1:
        raise MappingError(f"{where}: a source needs exactly one of 'expr', 'expr_index' or 'pose'")
    if "pose" in src and src.get("axis") not in _AXES:
        raise MappingError(f"{where}: a pose source needs 'axis' in x, y, z")
    if not np.isfinite(float(src.get("weight", 1.0))):
        raise MappingError(f"{where}: weight must be a finite number")


def _parse_axes(axes, where: str) -> list[tuple[int, float]]:
    if not (isinstance(axes, list) and len(axes) == 3):
        raise MappingError(f"{where}: 'axes' must be 3 strings like ['x', '-z', 'y']")
    out = []
    for a in axes:
        a = str(a).strip().lower()
        sign = -1.0 if a.startswith("-") else 1.0
        a = a.lstrip("+-")
        if a not in _AXES:
            raise MappingError(f"{where}: axis {a!r} is not x, y or z")
        out.append((_AXES[a], sign))
    return out


def validate(mapping: dict) -> dict:
    """Check a map's structure; returns it. Raises :class:`MappingError` naming the bad entry."""
    if not isinstance(mapping, dict) or mapping.get("format") != FORMAT:
        raise MappingError(f"not a retarget map: expected a JSON object with \"format\": \"{FORMAT}\"")
    if int(mapping.get("version", 0)) > VERSION:
        raise MappingError(f"map version {mapping.get('version')} is newer than this add-on ({VERSION}); update it")
    seen = set()
    for i, e in enumerate(mapping.get("shape_keys", [])):
        where = f"shape_keys[{i}]"
        if not isinstance(e, dict):
            raise MappingError(f"{where}: must be an object")
        if e.get("all_expressions"):
            continue
        if not isinstance(e.get("target"), str) or not e["target"]:
            raise MappingError(f"{where}: needs a 'target' shape key name")
        if e["target"] in seen:
            raise MappingError(f"{where}: target {e['target']!r} appears twice; merge its sources")
        seen.add(e["target"])
        if not isinstance(e.get("sources"), list) or not e["sources"]:
            raise MappingError(f"{where} ({e['target']}): needs a non-empty 'sources' list")
        for j, s in enumerate(e["sources"]):
            _check_source(s, f"{where}.sources[{j}]")
        lo, hi = e.get("min"), e.get("max")
        if lo is not None and hi is not None and float(lo) > float(hi):
            raise MappingError(f"{where} ({e['target']}): min {lo} > max {hi}")
    for i, e in enumerate(mapping.get("bones", [])):
        where = f"bones[{i}]"
        if not isinstance(e, dict) or not e.get("target") or not e.get("source"):
            raise MappingError(f"{where}: needs 'target' (a bone of the target rig) and 'source' (a FLAME joint)")
        _parse_axes(e.get("axes", ["x", "y", "z"]), where)
        if e.get("space", "world") not in ("world", "local"):
            raise MappingError(f"{where}: 'space' must be 'world' or 'local'")
    return mapping


def load(path: str | Path) -> dict:
    """Read and validate a map file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise MappingError(f"cannot read retarget map {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise MappingError(f"retarget map {path} is not valid JSON: {e}") from None
    try:
        return validate(data)
    except MappingError as e:
        raise MappingError(f"{path.name}: {e}") from None


def save(mapping: dict, path: str | Path) -> None:
    """Write a map (validated) as indented JSON."""
    Path(path).write_text(json.dumps(validate(mapping), indent=2) + "\n", encoding="utf-8")


def builtin_dir() -> Path:
    """Folder of the maps shipped with the add-on."""
    return Path(__file__).with_name("maps")


def builtin_maps() -> dict[str, Path]:
    """``{stem: path}`` of the shipped maps (flame, arkit52, rigify_face)."""
    return {p.stem: p for p in sorted(builtin_dir().glob("*.json"))}


def _source_values(src: dict, expression: np.ndarray, pose: np.ndarray, expr_names: list[str],
                   joint_names: list[str]) -> np.ndarray | None:
    if "pose" in src:
        j = match(src["pose"], joint_names)
        return None if j is None else pose[:, joint_names.index(j), _AXES[src["axis"]]]
    if "expr_index" in src:
        k = int(src["expr_index"])
        return expression[:, k] if 0 <= k < expression.shape[1] else None
    name = match(src["expr"], expr_names)
    return None if name is None else expression[:, expr_names.index(name)]


def evaluate(mapping: dict, expression: np.ndarray, pose: np.ndarray, expression_names: list[str],
             joint_names: list[str], shape_keys: list[str] | None = None,
             bones: dict[str, np.ndarray] | None = None, arkit: dict[str, np.ndarray] | None = None) -> Retargeted:
    """Apply a map to a track.

    expression ``(T,E)``, pose ``(T,J,3)`` (axis-angle, FLAME head frame); ``shape_keys``: the
    target's shape-key names (None: no shape keys); ``bones``: the target's bones ``{name: rest basis
    (3,3)}`` in Blender world (armature rotation @ bone.matrix_local rotation); ``arkit``: the
    track's ARKit scores ``{name: (T,)}`` (used by maps with ``"arkit_scores": true``). Entries whose
    target or sources are missing are listed in ``skipped`` rather than failing.
    """
    expression = np.asarray(expression, dtype=np.float64)
    pose = np.asarray(pose, dtype=np.float64)
    t = expression.shape[0]
    if pose.shape[:1] != (t,) or pose.ndim != 3 or pose.shape[2] != 3:
        raise ValueError(f"pose must be ({t},J,3), got {pose.shape}")
    names = list(expression_names)[: expression.shape[1]]
    joints = list(joint_names)
    out = Retargeted()
    keys = list(shape_keys or [])
    scored: set[str] = set()
    if mapping.get("arkit_scores") and arkit and keys:
        for name, v in arkit.items():
            hit = match(name, keys)
            if hit is not None and hit not in scored:
                out.shape_keys[hit] = np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)
                scored.add(hit)
    for e in mapping.get("shape_keys", []):
        if e.get("all_expressions"):
            for k, n in enumerate(names):
                hit = match(n, keys) if keys else None
                if hit is None:
                    out.skipped.append(f"shape key {n!r}: not on the target")
                elif hit not in out.shape_keys:
                    out.shape_keys[hit] = expression[:, k].copy()
            continue
        hit = match(e["target"], keys) if keys else None
        if hit is None:
            out.skipped.append(f"shape key {e['target']!r}: not on the target")
            continue
        if hit in scored:
            continue
        value = np.full(t, float(e.get("offset", 0.0)))
        used = 0
        for s in e["sources"]:
            v = _source_values(s, expression, pose, names, joints)
            if v is None:
                out.skipped.append(f"shape key {e['target']!r}: source {s} not in this track")
                continue
            value += float(s.get("weight", 1.0)) * v
            used += 1
        if not used:
            continue
        lo, hi = e.get("min"), e.get("max")
        value = np.clip(value, -np.inf if lo is None else float(lo), np.inf if hi is None else float(hi))
        out.shape_keys[hit] = out.shape_keys[hit] + value if hit in out.shape_keys else value
    available = dict(bones or {})
    mats: dict[str, np.ndarray] = {}
    for e in mapping.get("bones", []):
        hit = match(e["target"], list(available)) if available else None
        j = match(e["source"], joints)
        if hit is None or j is None:
            what = "bone not on the target" if hit is None else "joint not in this track"
            out.skipped.append(f"bone {e['target']!r} <- {e['source']!r}: {what}")
            continue
        v = pose[:, joints.index(j)]
        v = np.stack([sign * v[:, a] for a, sign in _parse_axes(e.get("axes", ["x", "y", "z"]), "bone")], -1)
        v = v * float(e.get("scale", 1.0))
        if e.get("space", "world") == "world":
            b = np.asarray(available[hit], dtype=np.float64)
            b = b / np.linalg.norm(b, axis=0, keepdims=True)
            v = to_blender(v) @ b
        m = axis_angle_to_matrix(v)
        mats[hit] = m @ mats[hit] if hit in mats else m
    out.bones = {name: matrix_to_axis_angle(m) for name, m in mats.items()}
    return out
