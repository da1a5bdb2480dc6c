"""Scene settings and runtime lists of the add-on (PropertyGroups)."""

# (no "from __future__ import annotations": Blender reads property annotations at registration)

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, \
    StringProperty

from . import retarget

_map_items: list[tuple[str, str, str]] = []   # kept alive: Blender does not copy dynamic enum items


def map_items(self, context):
    """Built-in maps, then the user's maps (``maps/`` in the extension's user folder)."""
    from .controller import user_dir

    items = []
    for stem, path in retarget.builtin_maps().items():
        try:
            label = retarget.load(path).get("name", stem)
        except retarget.MappingError:
            continue
        items.append((f"builtin:{stem}", label, f"Built-in map {path.name}"))
    try:
        for path in sorted(user_dir("maps").glob("*.json")):
            items.append((f"user:{path.stem}", f"{path.stem} (user)", str(path)))
    except Exception:  # noqa: BLE001 - no user dir (e.g. not installed as an extension)
        pass
    _map_items[:] = items or [("builtin:flame", "FLAME rig", "")]
    return _map_items


def _is_armature(self, obj) -> bool:
    return obj.type == "ARMATURE"


def _has_keys(self, obj) -> bool:
    return obj.type == "MESH" and obj.data.shape_keys is not None


class FFAvatarPortrait(bpy.types.PropertyGroup):
    filepath: StringProperty(name="Portrait", subtype="FILE_PATH")


class FFAvatarPair(bpy.types.PropertyGroup):
    flame_vertex: IntProperty(name="FLAME Vertex", min=0)
    target_vertex: IntProperty(name="Target Vertex", min=0)


class FFAvatarAvatarItem(bpy.types.PropertyGroup):
    avatar_id: StringProperty(name="Id")
    label: StringProperty(name="Name")
    info: StringProperty(name="Info")


def _pick_avatar(self, context):
    items = context.window_manager.ffavatar_avatars
    if 0 <= self.ffavatar_avatar_index < len(items):
        context.scene.ffavatar.avatar_id = items[self.ffavatar_avatar_index].avatar_id


class FFAvatarSettings(bpy.types.PropertyGroup):
    # avatar
    portraits: CollectionProperty(type=FFAvatarPortrait)
    portrait_index: IntProperty()
    avatar_name: StringProperty(name="Name", default="", description="Name of the new avatar in the store")
    personalize_steps: IntProperty(name="Personalize Steps", default=0, min=0, max=10000,
                                   description="Optimization steps after reconstruction (0: none; ~500 for best quality)")
    crop: BoolProperty(name="Crop Faces", default=True, description="Detect and crop the face in each image")
    avatar_id: StringProperty(name="Avatar", description="Id of the avatar used by Animate and Personalize")
    # animate
    driver_path: StringProperty(name="Driver Clip", subtype="FILE_PATH",
                                description="A movie, an image folder or one numbered image of a sequence")
    driver_first: IntProperty(name="First Frame", default=0, min=0, description="Driver frames to skip")
    driver_count: IntProperty(name="Frames", default=0, min=0, description="Driver frames to use (0: all)")
    fps: FloatProperty(name="FPS", default=0.0, min=0.0, max=1000.0, description="Driver frame rate (0: from the clip)")
    camera_mode: EnumProperty(name="Camera", default="SCENE", items=[
        ("SCENE", "Scene Camera", "Render from the active scene camera (its parameters are sent per frame)"),
        ("DRIVER", "Driver Camera", "Render from the camera estimated in each driver frame (keyed on a camera)")])
    size: IntProperty(name="Size", default=512, min=16, max=4096, description="Frame size with the driver camera")
    alpha: BoolProperty(name="Alpha", default=False, description="Frames with transparency (PNG)")
    key_rig: BoolProperty(name="Key FLAME Rig", default=True, description="Keyframe the FLAME rig with the track")
    use_vse: BoolProperty(name="Sequencer Strip", default=False, description="Also add the frames as a VSE strip")
    plane_distance: FloatProperty(name="Plane Distance", default=10.0, min=0.01, unit="LENGTH",
                                  description="Distance of the frames plane in front of the camera")
    run_name: StringProperty(name="Run Name", default="FFAvatar", description="Names the frames, plane and strip")
    # rig & retarget
    n_expr: IntProperty(name="Expressions", default=0, min=0, description="Shape keys on the FLAME rig (0: all)")
    source_rig: PointerProperty(name="FLAME Rig", type=bpy.types.Object, poll=_is_armature,
                                description="FLAME rig armature holding the track (default: the scene's)")
    retarget_map: EnumProperty(name="Map", items=map_items, description="Retarget map (JSON)")
    fit_target: PointerProperty(name="Target Mesh", type=bpy.types.Object, poll=_has_keys,
                                description="Mesh whose shape keys the automatic fit solves for")
    pairs: CollectionProperty(type=FFAvatarPair)
    pair_index: IntProperty()
    fit_ridge: FloatProperty(name="Regularization", default=1e-4, min=0.0, soft_max=1.0, precision=5,
                             description="Pulls weights toward zero where the correspondences do not decide them")


classes = (FFAvatarPortrait, FFAvatarPair, FFAvatarAvatarItem, FFAvatarSettings)


def register_props() -> None:
    bpy.types.Scene.ffavatar = PointerProperty(type=FFAvatarSettings)
    bpy.types.WindowManager.ffavatar_avatars = CollectionProperty(type=FFAvatarAvatarItem)
    bpy.types.WindowManager.ffavatar_avatar_index = IntProperty(update=_pick_avatar)


def unregister_props() -> None:
    del bpy.types.WindowManager.ffavatar_avatar_index
    del bpy.types.WindowManager.ffavatar_avatars
    del bpy.types.Scene.ffavatar
