"""Writing keyframes into Blender, across action APIs (bpy layer over ``keyframes.py``).

Blender 4.2/4.3 keep F-Curves on ``Action.fcurves``; 4.4 added slotted actions (F-Curves in a
channelbag per slot) and 5.0 removed ``Action.fcurves``. :func:`curve_container` hides that.
Keys go in through the fast path: ``keyframe_points.add(n)`` + ``foreach_set("co", ...)``.
"""

from __future__ import annotations

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


def _new_fcurve(fcurves, data_path: str, index: int, group: str | None):
    fc = fcurves.find(data_path, index=index)
    if fc is not None:
        fcurves.remove(fc)
    if _slotted():
        return fcurves.new(data_path, index=index, group_name=group or "")
    return fcurves.new(data_path, index=index, action_group=group or "")


def write_curves(id_data: bpy.types.ID, curves: list[Curve], *, action_name: str | None = None,
                 interpolation: str = "LINEAR") -> int:
    """Replace the F-Curves named by ``curves`` on ``id_data`` with their keys. Returns the number of
    keys written."""
    if not curves:
        return 0
    fcurves = curve_container(id_data, action_name or f"{id_data.name}Action")
    interp = _INTERPOLATION[interpolation]
    total = 0
    for c in curves:
        fc = _new_fcurve(fcurves, c.data_path, c.index, c.group)
        n = len(c.frames)
        fc.keyframe_points.add(n)
        fc.keyframe_points.foreach_set("co", c.co())
        fc.keyframe_points.foreach_set("interpolation", np.full(n, interp, dtype=np.int32))
        fc.update()
        total += n
    return total


def read_curve(id_data: bpy.types.ID, data_path: str, index: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """``(frames (T,), values (T,))`` of one F-Curve, or None."""
    for fc in find_fcurves(id_data):
        if fc.data_path == data_path and fc.array_index == index:
            n = len(fc.keyframe_points)
            co = np.empty(2 * n, dtype=np.float32)
            fc.keyframe_points.foreach_get("co", co)
            return co[0::2].astype(np.float64), co[1::2].astype(np.float64)
    return None
