"""FFAvatar for Blender: few-shot Gaussian head avatars from a local backend, FLAME rig keyframes,
retargeting and headless batches.

Blender-free logic (queues, protocol events, tracks, rotations, retarget maps, NNLS) lives in modules
that never import bpy (``link``, ``session``, ``track``, ``rotations``, ``rigdata``, ``keyframes``,
``names``, ``retarget``, ``nnls``, ``autofit``), so they run in tests and batch mode as plain functions.
The bpy layer (``anim``, ``rig``, ``bake``, ``scene``, ``props``, ``prefs``, ``operators``, ``panels``)
is imported by :func:`register` only.
"""

from __future__ import annotations


def register() -> None:
    from . import ui

    ui.register()


def unregister() -> None:
    from . import ui

    ui.unregister()
