"""Registration of every class and the timer that drains backend events in the UI."""

from __future__ import annotations

import logging

import bpy

from . import controller, operators, panels, prefs, props

log = logging.getLogger(__name__)

CLASSES = (*prefs.classes, *props.classes, *operators.classes, *panels.classes)
ACTIVE_INTERVAL, IDLE_INTERVAL = 0.05, 0.25


def _redraw() -> None:
    wm = bpy.context.window_manager
    for win in getattr(wm, "windows", []):
        for area in win.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def _status_text() -> str | None:
    s = controller.session()
    jobs = s.active_jobs() if s is not None else []
    if not jobs:
        return None
    j = jobs[0]
    return f"FFAvatar: {j.label} {j.fraction * 100:.0f}% {j.message}"


def timer() -> float:
    """Drain events (a few ms at most), refresh the UI; never raises."""
    try:
        controller.pump(0.02)
        if controller.runtime.changed or controller.session() is not None:
            controller.runtime.changed = False
            _redraw()
            text = _status_text()
            ws = getattr(bpy.context, "workspace", None)
            if ws is not None:
                ws.status_text_set(text)
        s = controller.session()
        return ACTIVE_INTERVAL if s is not None and s.active_jobs() else IDLE_INTERVAL
    except Exception:  # noqa: BLE001 - a timer that raises is unregistered by Blender
        log.exception("FFAvatar timer")
        return IDLE_INTERVAL


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    props.register_props()
    if not bpy.app.timers.is_registered(timer):
        bpy.app.timers.register(timer, first_interval=IDLE_INTERVAL, persistent=True)


def unregister() -> None:
    if bpy.app.timers.is_registered(timer):
        bpy.app.timers.unregister(timer)
    try:
        controller.disconnect()
        controller.stop_backend()
    finally:
        props.unregister_props()
        for cls in reversed(CLASSES):
            bpy.utils.unregister_class(cls)
