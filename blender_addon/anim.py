"""Writing keyframes into Blender, across action APIs (bpy layer over ``keyframes.py``).

Blender 4.2/4.3 keep F-Curves on ``Action.fcurves``; 4.4 added slotted actions (F-Curves in a
channelbag per slot) and 5.0 removed ``Action.fcurves``. :func:`curve_container` hides that.
Keys go in through the fast path: ``keyframe_points.add(n)`` + ``foreach_set("co", ...)``.

Nothing the user keyed is lost: keys go into the action the datablock already has (a new one only
when it has none), and on an F-Curve that already has keys only those inside the written frame range
are replaced; keys before and after it stay as they were (handles, interpolation and all).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import bpy
import numpy as np

from .keyframes import Curve

_INTERPOLATION = {"CONSTANT": 0, "LINEAR": 1, "BEZIER": 2}


def _slotted() -> bool:
    return bpy.app.version >= (4, 4, 0)


def ensure_action(id_data: bpy.types.ID, name: str) -> bpy.types.Action:
    """The action animating ``id_data`` (created and assigned if none; on 4.4+ with a slot for it)."""
    ad = id_data.animation_data or id_data.animation_data_create()
    action = ad.action
    if action is None:
        action = bpy.data.actions.new(name)
        if _slotted():
            slot = action.slots.new(id_type=id_data.id_type, name=id_data.name)
            ad.action = action
            ad.action_slot = slot
        else:
            ad.action = action
    elif _slotted() and ad.action_slot is None:
        slot = action.slots.new(id_type=id_data.id_type, name=id_data.name)
        ad.action_slot = slot
    return action


def curve_container(id_data: bpy.types.ID, name: str):
    """The collection to create F-Curves in for ``id_data``: ``Action.fcurves`` (4.2/4.3) or the
    channelbag of its slot (4.4+)."""
    action = ensure_action(id_data, name)
    if not _slotted():
        return action.fcurves
    from bpy_extras.anim_utils import action_ensure_channelbag_for_slot

    return action_ensure_channelbag_for_slot(action, id_data.animation_data.action_slot).fcurves


def find_fcurves(id_data: bpy.types.ID) -> list:
    """Every F-Curve animating ``id_data`` (empty when it has no action)."""
    ad = id_data.animation_data
    if ad is None or ad.action is None:
        return []
    if not _slotted():
        return list(ad.action.fcurves)
    from bpy_extras.anim_utils import action_get_channelbag_for_slot

    if ad.action_slot is None:
        return []
    bag = action_get_channelbag_for_slot(ad.action, ad.action_slot)
    return [] if bag is None else list(bag.fcurves)


@dataclass
class Written:
    """What :func:`write_curves` did: where the keys went and what was there before."""

    target: str = ""                  # the datablock, e.g. "ARKitRig" or "Key (ARKitFace)"
    action: str = ""                  # the action that holds the keys
    created: bool = False             # the action was made here (the datablock had none)
    curves: int = 0
    keys: int = 0                     # keys written
    replaced: int = 0                 # existing keys inside the frame range that were replaced
    kept: int = 0                     # existing keys outside the range, left as they were
    frames: tuple[float, float] | None = None
    paths: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.keys:
            return f"nothing written on {self.target}"
        lo, hi = self.frames or (0, 0)
        s = (f"{self.keys} keys on {self.curves} channels of {self.target}, frames {lo:g}-{hi:g}, in "
             f"{'new ' if self.created else ''}action '{self.action}'")
        if self.replaced or self.kept:
            s += f" ({self.replaced} earlier keys in that range replaced, {self.kept} outside it kept)"
        return s


def _target_name(id_data: bpy.types.ID) -> str:
    user = getattr(id_data, "user", None)   # a shape-key datablock names its mesh
    return f"{id_data.name} ({user.name})" if isinstance(id_data, bpy.types.Key) and user is not None else id_data.name


def _fcurve(fcurves, data_path: str, index: int, group: str | None):
    fc = fcurves.find(data_path, index=index)
    if fc is not None:
        return fc
    if _slotted():
        return fcurves.new(data_path, index=index, group_name=group or "")
    return fcurves.new(data_path, index=index, action_group=group or "")


def _clear_range(fc, lo: float, hi: float, eps: float = 1e-4) -> tuple[int, int]:
    """Remove ``fc``'s keys with lo <= frame <= hi; returns (removed, kept)."""
    n = len(fc.keyframe_points)
    if not n:
        return 0, 0
    co = np.empty(2 * n, dtype=np.float32)
    fc.keyframe_points.foreach_get("co", co)
    inside = np.flatnonzero((co[0::2] >= lo - eps) & (co[0::2] <= hi + eps))
    points = fc.keyframe_points
    for i in inside[::-1]:
        points.remove(points[int(i)], fast=True)
    return len(inside), n - len(inside)


def write_curves(id_data: bpy.types.ID, curves: list[Curve], *, action_name: str | None = None,
                 interpolation: str = "LINEAR") -> Written:
    """Key ``curves`` on ``id_data``: in its action (one named ``action_name`` is made when it has
    none), replacing only the existing keys inside each curve's frame range. Returns what was written."""
    out = Written(target=_target_name(id_data))
    if not curves:
        return out
    had_action = id_data.animation_data is not None and id_data.animation_data.action is not None
    fcurves = curve_container(id_data, action_name or f"{id_data.name}Action")
    out.action, out.created = id_data.animation_data.action.name, not had_action
    interp = _INTERPOLATION[interpolation]
    lo_all, hi_all = np.inf, -np.inf
    for c in curves:
        n = len(c.frames)
        if not n:
            continue
        lo, hi = float(np.min(c.frames)), float(np.max(c.frames))
        lo_all, hi_all = min(lo_all, lo), max(hi_all, hi)
        fc = _fcurve(fcurves, c.data_path, c.index, c.group)
        removed, kept = _clear_range(fc, lo, hi)
        out.replaced += removed
        out.kept += kept
        points = fc.keyframe_points
        m = len(points)
        points.add(n)
        co = np.empty(2 * (m + n), dtype=np.float32)
        points.foreach_get("co", co)
        co[2 * m:] = c.co()
        points.foreach_set("co", co)
        modes = np.empty(m + n, dtype=np.int32)
        points.foreach_get("interpolation", modes)
        modes[m:] = interp
        points.foreach_set("interpolation", modes)
        fc.update()
        out.keys += n
        out.curves += 1
        out.paths.append(f"{c.data_path}[{c.index}]")
    if out.curves:
        out.frames = (lo_all, hi_all)
    return out


def read_curve(id_data: bpy.types.ID, data_path: str, index: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """``(frames (T,), values (T,))`` of one F-Curve, or None."""
    for fc in find_fcurves(id_data):
        if fc.data_path == data_path and fc.array_index == index:
            n = len(fc.keyframe_points)
            co = np.empty(2 * n, dtype=np.float32)
            fc.keyframe_points.foreach_get("co", co)
            return co[0::2].astype(np.float64), co[1::2].astype(np.float64)
    return None
