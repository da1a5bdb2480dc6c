"""Operators: thin wrappers that call :mod:`.controller` and turn its errors into reports."""

# (no "from __future__ import annotations": Blender reads property annotations at registration)

import logging
import os

import bpy
from bpy.props import CollectionProperty, IntProperty, StringProperty

from . import controller as ctl

log = logging.getLogger(__name__)


class _Op(bpy.types.Operator):
    """Runs :meth:`act`; exceptions become an error report instead of a traceback."""

    bl_options = {"REGISTER"}

    def act(self, context) -> str | None:
        raise NotImplementedError

    def execute(self, context):
        try:
            msg = self.act(context)
        except Exception as e:  # noqa: BLE001 - every failure becomes a readable report
            log.debug("operator failed", exc_info=True)
            self.report({"ERROR"}, str(e) or type(e).__name__)
            return {"CANCELLED"}
        if msg:
            self.report({"INFO"}, msg)
        return {"FINISHED"}


# ------------------------------------------------------------------------ backend
class FFAVATAR_OT_connect(_Op):
    bl_idname = "ffavatar.connect"
    bl_label = "Connect"
    bl_description = "Connect to the backend at the address set in the preferences"

    def act(self, context):
        ctl.connect()
        return f"connecting to {ctl.session().link.address}"


class FFAVATAR_OT_disconnect(_Op):
    bl_idname = "ffavatar.disconnect"
    bl_label = "Disconnect"
    bl_description = "Close the link to the backend (it keeps running)"

    def act(self, context):
        ctl.disconnect()


class FFAVATAR_OT_start_backend(_Op):
    bl_idname = "ffavatar.start_backend"
    bl_label = "Start Backend"
    bl_description = "Start a backend with the command from the preferences and connect to it"

    def act(self, context):
        ctl.start_backend(wait=0)   # the UI timer connects once it listens
        return "starting the backend"


class FFAVATAR_OT_stop_backend(_Op):
    bl_idname = "ffavatar.stop_backend"
    bl_label = "Stop Backend"
    bl_description = "Stop the backend this Blender started"

    def act(self, context):
        ctl.stop_backend()


class FFAVATAR_OT_cancel(_Op):
    bl_idname = "ffavatar.cancel"
    bl_label = "Cancel"
    bl_description = "Cancel a running job (all of them when none is named)"
    job: StringProperty(options={"SKIP_SAVE"})

    def act(self, context):
        s = ctl.require_session()
        jobs = [s.jobs[self.job]] if self.job in s.jobs else s.active_jobs()
        for j in jobs:
            s.cancel(j)
        return f"cancelling {len(jobs)} job(s)"


# ------------------------------------------------------------------------ avatar
class FFAVATAR_OT_portrait_add(_Op):
    bl_idname = "ffavatar.portrait_add"
    bl_label = "Add Portraits"
    bl_description = "Add portrait images of one person"
    files: CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    filter_image: bpy.props.BoolProperty(default=True, options={"HIDDEN"})

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def act(self, context):
        st = context.scene.ffavatar
        for f in self.files:
            if f.name:
                st.portraits.add().filepath = os.path.join(self.directory, f.name)
        st.portrait_index = len(st.portraits) - 1


class FFAVATAR_OT_portrait_remove(_Op):
    bl_idname = "ffavatar.portrait_remove"
    bl_label = "Remove Portrait"

    def act(self, context):
        st = context.scene.ffavatar
        if 0 <= st.portrait_index < len(st.portraits):
            st.portraits.remove(st.portrait_index)
            st.portrait_index = min(st.portrait_index, len(st.portraits) - 1)


def _portrait_paths(context) -> list[str]:
    return [p.filepath for p in context.scene.ffavatar.portraits if p.filepath]


class FFAVATAR_OT_reconstruct(_Op):
    bl_idname = "ffavatar.reconstruct"
    bl_label = "Reconstruct"
    bl_description = "Build an avatar from the portraits (in the background)"

    def act(self, context):
        st = context.scene.ffavatar
        ctl.reconstruct(_portrait_paths(context), name=st.avatar_name, steps=st.personalize_steps, crop=st.crop)
        return "reconstruction started"


class FFAVATAR_OT_personalize(_Op):
    bl_idname = "ffavatar.personalize"
    bl_label = "Personalize"
    bl_description = "Fine-tune the selected avatar on the portraits"
    steps: IntProperty(name="Steps", default=500, min=1, max=10000)

    def act(self, context):
        st = context.scene.ffavatar
        ctl.personalize(st.avatar_id, _portrait_paths(context), steps=self.steps)
        return "personalization started"


class FFAVATAR_OT_refresh_avatars(_Op):
    bl_idname = "ffavatar.refresh_avatars"
    bl_label = "Refresh Avatars"

    def act(self, context):
        if ctl.refresh_avatars() is None:
            raise RuntimeError("the backend is not connected")


class FFAVATAR_OT_delete_avatar(_Op):
    bl_idname = "ffavatar.delete_avatar"
    bl_label = "Delete Avatar"
    bl_description = "Delete the selected avatar from the backend's store"

    def invoke(self, context, event):
        return context.window_manager.invoke_confirm(self, event)

    def act(self, context):
        ctl.delete_avatar(context.scene.ffavatar.avatar_id)


# ------------------------------------------------------------------------ animate
class FFAVATAR_OT_animate(_Op):
    bl_idname = "ffavatar.animate"
    bl_label = "Animate"
    bl_description = "Drive the avatar with the clip: frames into the scene, keys on the FLAME rig"

    def act(self, context):
        st = context.scene.ffavatar
        run = ctl.animate(context.scene, st.avatar_id, st.driver_path, first=st.driver_first, count=st.driver_count,
                          fps=st.fps or None, camera_mode=st.camera_mode, size=st.size, alpha=st.alpha,
                          key_rig=st.key_rig, use_vse=st.use_vse, distance=st.plane_distance, name=st.run_name)
        return f"animating into {run.writer.folder}"


# ------------------------------------------------------------------------ rig & retarget
class FFAVATAR_OT_build_rig(_Op):
    bl_idname = "ffavatar.build_rig"
    bl_label = "Build FLAME Rig"
    bl_description = "Fetch the backend's head model and build the FLAME rig (mesh, shape keys, armature)"

    def act(self, context):
        n = context.scene.ffavatar.n_expr
        ctl.fetch_rig(n or None, scene_name=context.scene.name)
        return "fetching the rig"


class FFAVATAR_OT_import_track(_Op):
    bl_idname = "ffavatar.import_track"
    bl_label = "Import Track"
    bl_description = "Key the FLAME rig with a saved track (.npz from 'ffavatar track')"
    filepath: StringProperty(subtype="FILE_PATH")
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def act(self, context):
        return ctl.import_track(context.scene, self.filepath).summary()


class FFAVATAR_OT_bake_retarget(_Op):
    bl_idname = "ffavatar.bake_retarget"
    bl_label = "Bake to Selected"
    bl_description = "Keyframe the selected rig (armature and/or shape-key meshes) from the FLAME track through the map"
    bl_options = {"REGISTER", "UNDO"}

    def act(self, context):
        st = context.scene.ffavatar
        rep = ctl.bake_retarget(context.scene, st.retarget_map, list(context.selected_objects), st.source_rig)
        for s in rep.skipped[:5]:
            log.info("skipped: %s", s)
        return rep.summary()


class FFAVATAR_OT_export_map(_Op):
    bl_idname = "ffavatar.export_map"
    bl_label = "Copy Map for Editing"
    bl_description = "Copy the chosen map into your maps folder as JSON to edit it"

    def act(self, context):
        return f"wrote {ctl.export_map(context.scene.ffavatar.retarget_map)}"


class FFAVATAR_OT_pair_add(_Op):
    bl_idname = "ffavatar.pair_add"
    bl_label = "Add Pair"
    bl_description = ("Edit the FLAME mesh and the target together, select one vertex on each, "
                      "and add them as a correspondence")

    def act(self, context):
        st = context.scene.ffavatar
        mesh, arm = ctl.scene_rig(context.scene)
        if mesh is None or st.fit_target is None:
            raise ValueError("needs a FLAME rig in the scene and a target mesh")
        a, b = ctl.add_pair_from_selection(mesh, st.fit_target)
        p = st.pairs.add()
        p.flame_vertex, p.target_vertex = a, b
        return f"pair {a} -> {b}"


class FFAVATAR_OT_pair_remove(_Op):
    bl_idname = "ffavatar.pair_remove"
    bl_label = "Remove Pair"

    def act(self, context):
        st = context.scene.ffavatar
        if 0 <= st.pair_index < len(st.pairs):
            st.pairs.remove(st.pair_index)


class FFAVATAR_OT_autofit(_Op):
    bl_idname = "ffavatar.autofit"
    bl_label = "Fit Shape Keys"
    bl_description = "Solve the target's shape-key weights per frame (non-negative least squares) and key them"
    bl_options = {"REGISTER", "UNDO"}

    def act(self, context):
        st = context.scene.ffavatar
        if st.fit_target is None:
            raise ValueError("pick the target mesh")
        pairs = [(p.flame_vertex, p.target_vertex) for p in st.pairs]
        return ctl.autofit(context.scene, st.fit_target, pairs, source_arm=st.source_rig, ridge=st.fit_ridge).summary()


classes = (
    FFAVATAR_OT_connect, FFAVATAR_OT_disconnect, FFAVATAR_OT_start_backend, FFAVATAR_OT_stop_backend,
    FFAVATAR_OT_cancel, FFAVATAR_OT_portrait_add, FFAVATAR_OT_portrait_remove, FFAVATAR_OT_reconstruct,
    FFAVATAR_OT_personalize, FFAVATAR_OT_refresh_avatars, FFAVATAR_OT_delete_avatar, FFAVATAR_OT_animate,
    FFAVATAR_OT_build_rig, FFAVATAR_OT_import_track, FFAVATAR_OT_bake_retarget, FFAVATAR_OT_export_map,
    FFAVATAR_OT_pair_add, FFAVATAR_OT_pair_remove, FFAVATAR_OT_autofit,
)
