"""Sidebar panels (3D View > Sidebar > FFAvatar): Backend, Avatar, Animate, Rig & Retarget."""

from __future__ import annotations

import bpy

from . import controller as ctl
from .link import ONLINE


class _Panel(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "FFAvatar"


def _jobs(layout, ops: tuple[str, ...] | None = None) -> None:
    """Progress bars (and cancel buttons) of the active jobs, optionally of some ops only."""
    s = ctl.session()
    if s is None:
        return
    for job in s.active_jobs():
        if ops is not None and job.op not in ops:
            continue
        row = layout.row(align=True)
        text = f"{job.label}: {job.message or job.state}"
        if job.frames:
            text += f" ({job.frames} frames)"
        if hasattr(row, "progress"):
            row.progress(factor=job.fraction, type="BAR", text=text)
        else:
            row.label(text=f"{text} {job.fraction * 100:.0f}%")
        op = row.operator("ffavatar.cancel", text="", icon="CANCEL")
        op.job = job.id


class FFAVATAR_PT_backend(_Panel):
    bl_label = "Backend"
    bl_idname = "FFAVATAR_PT_backend"

    def draw(self, context):
        layout = self.layout
        s = ctl.session()
        col = layout.column(align=True)
        if s is None:
            col.label(text="Not connected", icon="UNLINKED")
        else:
            link = s.link
            icon = "LINKED" if link.state == ONLINE else "ERROR" if link.state == "offline" else "TIME"
            col.label(text=f"{link.state.capitalize()}: {link.address}", icon=icon)
            if link.state == ONLINE:
                info = link.info
                col.label(text=f"Device: {info.get('device') or info.get('engine', '?')}")
                col.label(text=f"Head model: {info.get('head_model_id') or '-'}")
            elif link.error:
                col.label(text=link.error[:80])
        row = layout.row(align=True)
        if s is None:
            row.operator("ffavatar.connect", icon="LINKED")
        else:
            row.operator("ffavatar.disconnect", icon="UNLINKED")
        be = ctl.runtime.backend
        if be is not None and be.alive:
            row.operator("ffavatar.stop_backend", icon="X")
        else:
            row.operator("ffavatar.start_backend", icon="PLAY")
        _jobs(layout)
        for level, text in list(ctl.runtime.messages)[-3:]:
            layout.label(text=text[:90], icon="ERROR" if level == "ERROR" else "INFO")


class FFAVATAR_UL_portraits(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        layout.label(text=bpy.path.basename(item.filepath) or "(empty)", icon="IMAGE_DATA")


class FFAVATAR_UL_avatars(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        selected = item.avatar_id == context.scene.ffavatar.avatar_id
        layout.label(text=item.label, icon="CHECKMARK" if selected else "USER")
        layout.label(text=item.info)


class FFAVATAR_PT_avatar(_Panel):
    bl_label = "Avatar"
    bl_idname = "FFAVATAR_PT_avatar"

    def draw(self, context):
        layout = self.layout
        st = context.scene.ffavatar
        layout.label(text="Portraits")
        row = layout.row()
        row.template_list("FFAVATAR_UL_portraits", "", st, "portraits", st, "portrait_index", rows=3)
        col = row.column(align=True)
        col.operator("ffavatar.portrait_add", text="", icon="ADD")
        col.operator("ffavatar.portrait_remove", text="", icon="REMOVE")
        layout.prop(st, "avatar_name")
        layout.prop(st, "personalize_steps")
        layout.prop(st, "crop")
        row = layout.row(align=True)
        row.operator("ffavatar.reconstruct", icon="USER")
        row.operator("ffavatar.personalize", icon="MODIFIER").steps = st.personalize_steps or 500
        _jobs(layout, ("reconstruct", "personalize"))
        layout.separator()
        row = layout.row()
        row.label(text="Avatars in the store")
        row.operator("ffavatar.refresh_avatars", text="", icon="FILE_REFRESH")
        row.operator("ffavatar.delete_avatar", text="", icon="TRASH")
        wm = context.window_manager
        layout.template_list("FFAVATAR_UL_avatars", "", wm, "ffavatar_avatars", wm, "ffavatar_avatar_index", rows=3)
        layout.prop(st, "avatar_id")


class FFAVATAR_PT_animate(_Panel):
    bl_label = "Animate"
    bl_idname = "FFAVATAR_PT_animate"

    def draw(self, context):
        layout = self.layout
        st = context.scene.ffavatar
        layout.prop(st, "driver_path")
        row = layout.row(align=True)
        row.prop(st, "driver_first")
        row.prop(st, "driver_count")
        layout.prop(st, "fps")
        layout.prop(st, "camera_mode", expand=True)
        if st.camera_mode == "DRIVER":
            layout.prop(st, "size")
        elif context.scene.camera is None:
            layout.label(text="The scene has no active camera", icon="ERROR")
        col = layout.column(align=True)
        col.prop(st, "alpha")
        col.prop(st, "key_rig")
        col.prop(st, "use_vse")
        col.prop(st, "plane_distance")
        col.prop(st, "run_name")
        layout.operator("ffavatar.animate", icon="PLAY")
        _jobs(layout, ("animate",))


class FFAVATAR_UL_pairs(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        layout.label(text=f"FLAME {item.flame_vertex}  ->  target {item.target_vertex}")


class FFAVATAR_PT_rig(_Panel):
    bl_label = "Rig & Retarget"
    bl_idname = "FFAVATAR_PT_rig"

    def draw(self, context):
        layout = self.layout
        st = context.scene.ffavatar
        row = layout.row(align=True)
        row.prop(st, "n_expr")
        row.operator("ffavatar.build_rig", icon="ARMATURE_DATA")
        layout.operator("ffavatar.import_track", icon="IMPORT")
        layout.prop(st, "source_rig")
        box = layout.box()
        box.label(text="Retarget through a map")
        box.prop(st, "retarget_map")
        row = box.row(align=True)
        row.operator("ffavatar.bake_retarget", icon="KEYINGSET")
        row.operator("ffavatar.export_map", text="", icon="DUPLICATE")
        box = layout.box()
        box.label(text="Automatic fit (shape keys)")
        box.prop(st, "fit_target")
        row = box.row()
        row.template_list("FFAVATAR_UL_pairs", "", st, "pairs", st, "pair_index", rows=3)
        col = row.column(align=True)
        col.operator("ffavatar.pair_add", text="", icon="ADD")
        col.operator("ffavatar.pair_remove", text="", icon="REMOVE")
        box.prop(st, "fit_ridge")
        box.operator("ffavatar.autofit", icon="SHAPEKEY_DATA")


classes = (FFAVATAR_PT_backend, FFAVATAR_UL_portraits, FFAVATAR_UL_avatars, FFAVATAR_PT_avatar, FFAVATAR_PT_animate,
           FFAVATAR_UL_pairs, FFAVATAR_PT_rig)
