"""Frames and cameras in the scene (bpy layer): the received image sequence on a camera-aligned
plane (and optionally a VSE strip), the scene camera's parameters per frame, the driver's camera."""

from __future__ import annotations

import logging
from pathlib import Path

import bpy
import numpy as np

from . import anim
from .cameras import camera_dict, driver_camera_matrices, driver_lens, frame_corners
from .frames import FrameWriter
from .keyframes import Curve
from .rotations import matrix_to_quaternion, quaternion_continuity
from .track import Track

log = logging.getLogger(__name__)

PLANE_TAG = "ffavatar_frames"
DRIVER_CAMERA = "FFAvatar Driver Camera"
REFERENCE_LENS = 50.0
"""Lens the frames plane is sized for in front of the driver camera; its x/y scale follows the
keyed lens (scale = REFERENCE_LENS / lens) so the plane always fills the view."""


class SceneError(ValueError):
    """The scene lacks what an operation needs (a camera, a perspective camera...)."""


def _animated(obj) -> bool:
    while obj is not None:
        if obj.animation_data or obj.constraints or (obj.data is not None and getattr(obj.data, "animation_data", None)):
            return True
        obj = obj.parent
    return False


def movie_info(path: str | Path) -> tuple[float, int]:
    """``(fps, frames)`` of a movie file as Blender reads it (``(0.0, 0)`` when it cannot); the
    temporary movie-clip datablock is removed again."""
    try:
        clip = bpy.data.movieclips.load(str(path), check_existing=False)
    except RuntimeError:
        return 0.0, 0
    try:
        return float(clip.fps or 0.0), int(clip.frame_duration)
    finally:
        bpy.data.movieclips.remove(clip)


def scene_rate(scene: bpy.types.Scene) -> float:
    """The scene's frame rate (``fps / fps_base``: 29.97 for 30000/1001)."""
    return float(scene.render.fps) / float(scene.render.fps_base)


def track_frames(scene: bpy.types.Scene, track: Track, frame_start: float) -> np.ndarray:
    """Scene frames ``(T,)`` of a track's rows with the clip's real timing: driver frame i, at
    ``i / track.fps`` seconds, lands at ``frame_start + i * scene fps / track.fps`` (fractional
    frames where the rates differ; keys there play at the right time)."""
    return frame_start + track.indices.astype(np.float64) * (scene_rate(scene) / float(track.fps))


def _binds_cameras(scene: bpy.types.Scene) -> bool:
    return any(m.camera is not None for m in scene.timeline_markers)


def camera_warnings(scene: bpy.types.Scene, cam_obj: bpy.types.Object) -> list[str]:
    """What of the camera and render settings the avatar frames do not reproduce (to tell the user)."""
    c, r, out = cam_obj.data, scene.render, []
    if c.dof.use_dof:
        out.append(f"camera {cam_obj.name} has depth of field; the avatar frames are rendered sharp")
    if r.use_motion_blur:
        out.append("the scene renders motion blur; the avatar frames have none")
    if r.use_border:
        out.append("the render region (border) is not applied to the avatar frames; they cover the whole view")
    local = np.linalg.inv(np.array(cam_obj.matrix_world)) @ np.array([0.0, 0.0, 0.0, 1.0])
    depth = -local[2]
    if not c.clip_start <= depth <= c.clip_end:
        out.append(f"the head (at the world origin, {depth:.2f} m from camera {cam_obj.name}) is outside its clip "
                   f"range {c.clip_start:g}-{c.clip_end:g} m; Blender would clip it, the avatar frames are not clipped")
    return out


def camera_params(scene: bpy.types.Scene, cam_obj: bpy.types.Object | None, frames: list[float]) -> dict | list[dict]:
    """The backend camera dict for each scene frame in ``frames`` (fractional frames are evaluated
    at that subframe), or one dict when nothing about the camera changes over time.

    Everything of the camera that changes the image is sent: its world matrix (animation, parents,
    constraints, drivers), lens, sensor size and fit, shift, the render resolution and percentage,
    and which camera is active (timeline markers bound to cameras switch it; ``cam_obj`` None means
    the scene's camera at each frame). What cannot be reproduced is refused (:class:`SceneError`):
    non-perspective cameras and non-square pixels. :func:`camera_warnings` lists what is ignored."""
    r = scene.render
    if r.pixel_aspect_x != r.pixel_aspect_y:
        raise SceneError(f"the render's pixel aspect is {r.pixel_aspect_x:g}:{r.pixel_aspect_y:g}; the avatar renders "
                         "square pixels: set Output > Format > Aspect to 1:1 or render from the driver's camera")
    follow = cam_obj is None or _binds_cameras(scene)

    def check(obj) -> None:
        if obj is None or obj.type != "CAMERA":
            raise SceneError("the scene has no active camera; add one or render from the driver's camera")
        if obj.data.type != "PERSP":
            raise SceneError(f"camera {obj.name} is {obj.data.type}; the avatar renders from perspective cameras")

    def one(obj) -> dict:
        check(obj)
        c = obj.data
        return camera_dict(np.array(obj.matrix_world), c.lens, r.resolution_x, r.resolution_y,
                           sensor_width=c.sensor_width, sensor_height=c.sensor_height, sensor_fit=c.sensor_fit,
                           shift_x=c.shift_x, shift_y=c.shift_y, resolution_percentage=r.resolution_percentage)

    if not frames:
        return one(scene.camera if follow else cam_obj)
    if not follow and not _animated(cam_obj):
        return one(cam_obj)
    current, sub = scene.frame_current, scene.frame_subframe
    out = []
    try:
        for f in frames:
            whole = int(np.floor(f))
            scene.frame_set(whole, subframe=float(f) - whole)
            out.append(one(scene.camera if follow else cam_obj))
    finally:
        scene.frame_set(current, subframe=sub)
    return out[0] if all(d == out[0] for d in out) else out


def key_driver_camera(scene: bpy.types.Scene, track: Track, frame_start: int, *, name: str = DRIVER_CAMERA,
                      collection=None) -> bpy.types.Object:
    """A camera keyed with the driver's estimated camera per frame (location, quaternion, lens)."""
    obj = bpy.data.objects.get(name)
    if obj is None or obj.type != "CAMERA":
        obj = bpy.data.objects.new(name, bpy.data.cameras.new(name))
        (collection or scene.collection).objects.link(obj)
    obj.rotation_mode = "QUATERNION"
    cam = obj.data
    cam.sensor_fit, cam.sensor_width = "HORIZONTAL", 36.0
    m = driver_camera_matrices(track.cam_rot, track.cam_t)
    quat = quaternion_continuity(matrix_to_quaternion(m[:, :3, :3]))
    frames = track_frames(scene, track, frame_start)
    curves = [Curve("location", i, frames, m[:, i, 3], "Object Transforms") for i in range(3)]
    curves += [Curve("rotation_quaternion", i, frames, quat[:, i], "Object Transforms") for i in range(4)]
    anim.write_curves(obj, curves, action_name=f"{name}Action")
    anim.write_curves(cam, [Curve("lens", 0, frames, driver_lens(track.focal), "Camera")], action_name=f"{name}Lens")
    return obj


def key_plane_scale(plane: bpy.types.Object, track: Track, frame_start: int, sensor_width: float = 36.0,
                    scene: bpy.types.Scene | None = None) -> None:
    """Key a driver-camera plane's x/y scale so it fills the view at each frame's lens."""
    frames = track_frames(scene or bpy.context.scene, track, frame_start)
    s = REFERENCE_LENS / driver_lens(track.focal, sensor_width)
    anim.write_curves(plane, [Curve("scale", i, frames, s, "Object Transforms") for i in range(2)],
                      action_name=f"{plane.name}Action")


def _ours(collection, name: str):
    """The datablock called ``name`` (or ``name.001``... when the user had that name first) that the
    add-on made (tagged ``PLANE_TAG``), or None."""
    hit = collection.get(name)
    if hit is not None and PLANE_TAG in hit:
        return hit
    return next((d for d in collection if PLANE_TAG in d and d.name.startswith(name + ".")), None)


def _plane_material(name: str, image: bpy.types.Image, frame_start: int, count: int) -> bpy.types.Material:
    mat = _ours(bpy.data.materials, name)
    if mat is None:                              # never rewire a material of the user's
        mat = bpy.data.materials.new(name)
        mat[PLANE_TAG] = name
    if bpy.app.version < (5, 0, 0):   # 5.0 materials always have a node tree (use_nodes is deprecated)
        mat.use_nodes = True
    nt = mat.node_tree
    nt.nodes.clear()
    tex = nt.nodes.new("ShaderNodeTexImage")
    tex.name = "FFAvatar Frames"
    tex.image = image
    emit = nt.nodes.new("ShaderNodeEmission")
    transparent = nt.nodes.new("ShaderNodeBsdfTransparent")
    mix = nt.nodes.new("ShaderNodeMixShader")
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    nt.links.new(tex.outputs["Color"], emit.inputs["Color"])
    nt.links.new(tex.outputs["Alpha"], mix.inputs["Fac"])
    nt.links.new(transparent.outputs[0], mix.inputs[1])
    nt.links.new(emit.outputs[0], mix.inputs[2])
    nt.links.new(mix.outputs[0], out.inputs["Surface"])
    if hasattr(mat, "surface_render_method"):
        mat.surface_render_method = "BLENDED"
    elif hasattr(mat, "blend_method"):
        mat.blend_method = "BLEND"
    set_sequence_range(tex.image_user, frame_start, count)
    return mat


def set_sequence_range(user, frame_start: int, count: int) -> None:
    """An ImageUser showing file N at scene frame N for ``count`` frames from ``frame_start``."""
    user.frame_start = frame_start
    user.frame_offset = frame_start - 1
    user.frame_duration = max(1, count)
    user.use_auto_refresh = True
    user.use_cyclic = False


def frames_image(writer: FrameWriter, name: str) -> bpy.types.Image:
    """The image sequence datablock of a writer's files (created or re-pointed, then reloaded)."""
    first = writer.first()
    if first is None:
        raise SceneError("no frames were received")
    img = _ours(bpy.data.images, name)
    if img is None:                              # never re-point an image of the user's
        img = bpy.data.images.load(str(first), check_existing=False)
        img.name = name
        img[PLANE_TAG] = name
    elif Path(bpy.path.abspath(img.filepath)) != first:
        img.filepath = str(first)
    img.source = "SEQUENCE"
    img.reload()
    return img


def show_frames(scene: bpy.types.Scene, writer: FrameWriter, camera: bpy.types.Object, *, name: str = "FFAvatar",
                distance: float = 10.0, lens: float | None = None, collection=None) -> bpy.types.Object:
    """Put the writer's image sequence on a plane filling ``camera``'s view at ``distance`` (parented
    to the camera, so it follows it). Frame numbers match the scene's. Returns the plane object."""
    if camera is None or camera.type != "CAMERA":
        raise SceneError("frames are shown in front of a camera; the scene has none")
    w, h = writer.size or (1, 1)
    c = camera.data
    corners = frame_corners(lens or c.lens, w, h, distance, sensor_width=c.sensor_width, sensor_height=c.sensor_height,
                            sensor_fit=c.sensor_fit, shift_x=c.shift_x, shift_y=c.shift_y)
    img = frames_image(writer, f"{name} Frames")
    start, last = writer.scene_range()
    count = last - start + 1
    plane_name = f"{name} Frames"
    obj = _ours(bpy.data.objects, plane_name)
    if obj is None or obj.type != "MESH":        # never clear a mesh of the user's
        me = bpy.data.meshes.new(plane_name)
        obj = bpy.data.objects.new(plane_name, me)
        (collection or scene.collection).objects.link(obj)
    me = obj.data
    me.clear_geometry()
    me.vertices.add(4)
    me.vertices.foreach_set("co", corners.astype(np.float32).ravel())
    me.loops.add(4)
    me.loops.foreach_set("vertex_index", np.arange(4, dtype=np.int32))
    me.polygons.add(1)
    me.polygons.foreach_set("loop_start", np.zeros(1, dtype=np.int32))
    uv = me.uv_layers.new(name="UVMap")
    uv.data.foreach_set("uv", np.array([0, 0, 1, 0, 1, 1, 0, 1], dtype=np.float32))
    me.update(calc_edges=True)
    mat = _plane_material(plane_name, img, start, count)
    me.materials.clear()
    me.materials.append(mat)
    obj.parent = camera
    obj.matrix_parent_inverse.identity()
    obj.matrix_basis.identity()
    obj[PLANE_TAG] = str(writer.folder)
    return obj


def _strips(scene: bpy.types.Scene):
    sed = scene.sequence_editor or scene.sequence_editor_create()
    return sed.strips if hasattr(sed, "strips") else sed.sequences


def frames_strip(scene: bpy.types.Scene, writer: FrameWriter, *, name: str = "FFAvatar", channel: int = 1):
    """A VSE image strip of the writer's files, one element per file, starting at its scene frame."""
    strips = _strips(scene)
    old = strips.get(name)
    if old is not None and old.type == "IMAGE" and Path(bpy.path.abspath(old.directory)) == writer.folder:
        strips.remove(old)          # this run's earlier strip; a strip of the user's is left alone
    order = sorted(writer.files)
    files = [writer.files[f] for f in order]
    strip = strips.new_image(name=name, filepath=str(files[0]), channel=channel, frame_start=order[0])
    for f in files[1:]:
        strip.elements.append(f.name)
    return strip


def strip_elements(scene: bpy.types.Scene, name: str = "FFAvatar") -> list[str]:
    """File names of a frames strip (tests and reports)."""
    strip = _strips(scene).get(name)
    return [] if strip is None else [e.filename for e in strip.elements]
