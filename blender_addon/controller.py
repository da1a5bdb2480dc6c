"""The add-on's actions as plain functions (bpy layer): operators, the UI timer, batch runs and
tests all call these. Network work goes through the :class:`~.session.Session` (non-blocking jobs
with handlers); batch runs block on :func:`wait`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from . import bake, rig as rigmod, scene as scenemod
from .driver import DriverClip, name_inputs, resolve
from .frames import FrameWriter, folder_name
from .link import Link
from .process import BackendProcess
from .rigdata import rig_from_dict
from .session import Job, Session
from .track import TrackBuffer

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "tcp://127.0.0.1:5557"


class Runtime:
    """Process-wide state of the add-on (never saved)."""

    def __init__(self) -> None:
        self.session: Session | None = None
        self.backend: BackendProcess | None = None
        self.runs: dict[str, AnimateRun] = {}
        self.messages: deque[tuple[str, str]] = deque(maxlen=20)
        self.avatars: list[dict] = []
        self.changed = False
        self.last_state: str | None = None
        self.connect_backend = False
        self.last_engine: str | None = None


runtime = Runtime()


def report(level: str, text: str) -> None:
    """A message for the panel (and the log)."""
    runtime.messages.append((level, text))
    runtime.changed = True
    (log.error if level == "ERROR" else log.warning if level == "WARNING" else log.info)("%s", text)


# ------------------------------------------------------------------------ preferences & folders
def prefs():
    """The add-on preferences, or None when the add-on is not enabled (plain imports in tests)."""
    addon = bpy.context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def pref(name: str, default: Any) -> Any:
    p = prefs()
    return getattr(p, name, default) if p is not None else default


def user_dir(*parts: str) -> Path:
    """A folder under the extension's user directory (created)."""
    root = Path(bpy.utils.extension_path_user(__package__, create=True))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def frames_folder(name: str) -> Path:
    """Where a run's frames go: next to the saved .blend (``//ffavatar_frames/<name>``) when the
    preference says so and the file is saved, else the extension's user directory."""
    safe = folder_name(name)  # a name of '..' must not lead out of the frames folder
    if pref("frames_location", "USER") == "BLEND" and bpy.data.filepath:
        path = Path(bpy.path.abspath("//ffavatar_frames")) / safe
        path.mkdir(parents=True, exist_ok=True)
        return path
    return user_dir("frames", safe)


# ------------------------------------------------------------------------ backend link
def session() -> Session | None:
    return runtime.session


def connect(address: str | None = None, *, timeout: float | None = None) -> Session:
    """(Re)open the link to the backend at ``address`` (default: the preference)."""
    address = address or pref("backend_address", DEFAULT_ADDRESS)
    timeout = float(timeout if timeout is not None else pref("timeout", 10.0))
    if runtime.session is not None:
        if runtime.session.link.address == address and runtime.session.link.running:
            return runtime.session
        disconnect()
    link = Link(address, timeout=timeout, client_factory=client_factory()).start()
    runtime.session = Session(link)
    runtime.session.on_link = _on_link
    report("INFO", f"connecting to {address}")
    return runtime.session


def client_factory():
    """Makes the bundled client, with CurveZMQ keys when the preferences name them."""
    server_key = bpy.path.abspath(pref("curve_server_key", "") or "")
    client_secret = bpy.path.abspath(pref("curve_client_secret", "") or "")
    if not server_key and not client_secret:
        return None   # Link's default: a plain client
    if not (server_key and client_secret):
        raise ValueError("CurveZMQ needs both the server's public key and this client's secret key file")
    from .backend.client import Client, CurveKeys

    keys = CurveKeys.from_files(server_key, client_secret)
    return lambda address, timeout: Client(address, timeout=timeout, curve=keys)


def _on_link(ev: dict) -> None:
    state = ev.get("state")
    info = ev.get("info", {})
    if state == "online" and runtime.last_state != "online":
        report("INFO", f"backend online: {info.get('server', '')} ({info.get('engine', '?')})")
        refresh_avatars()
    elif state == "online" and info.get("engine") == "ready" and runtime.last_engine != "ready":
        report("INFO", f"model ready on {info.get('device')} (head model {info.get('head_model_id')})")
    elif state == "online" and info.get("engine") == "failed":
        report("ERROR", f"the backend's model failed to load: {info.get('engine_error')}")
    elif state == "offline" and runtime.last_state != "offline":
        report("WARNING", f"backend offline: {ev.get('message') or 'not reachable'}")
    runtime.last_state, runtime.last_engine = state, info.get("engine")


def disconnect() -> None:
    if runtime.session is not None:
        runtime.session.link.stop()
        runtime.session = None
        runtime.changed = True


def require_session() -> Session:
    s = runtime.session
    if s is None:
        raise RuntimeError("not connected to a backend: press Connect or Start in the FFAvatar panel")
    return s


def backend_command() -> str:
    """The preference's command (Python + arguments) that starts a backend."""
    python = pref("backend_python", "").strip()
    args = pref("backend_args", "-m ffavatar_backend serve --device auto").strip()
    if not python:
        raise RuntimeError("set 'Backend Python' in the add-on preferences to the Python of an environment "
                           "with ffavatar installed")
    import shlex
    return f"{shlex.quote(python)} {args}"


def start_backend(command: str | list[str] | None = None, *, bind: str | None = None, wait: float = 60.0,
                  connect_after: bool = True) -> str | None:
    """Start a backend subprocess and connect to it once it listens. ``wait > 0`` blocks up to that
    long and returns the endpoint (batch, tests); ``wait == 0`` returns at once and :func:`pump`
    connects when the server reports its endpoint (the UI)."""
    stop_backend()
    bind = bind or pref("backend_address", DEFAULT_ADDRESS)
    proc = BackendProcess(command or backend_command(), bind=bind, log_path=user_dir("logs") / "backend.log")
    runtime.backend = proc.start()
    runtime.connect_backend = connect_after
    if wait <= 0:
        report("INFO", f"starting the backend (pid {proc.proc.pid})...")
        return None
    endpoint = proc.wait_listening(wait)
    _backend_listening()
    return endpoint


def _backend_listening() -> None:
    proc = runtime.backend
    report("INFO", f"backend started (pid {proc.proc.pid}) at {proc.endpoint}")
    if runtime.connect_backend:
        runtime.connect_backend = False
        connect(proc.endpoint)


def _watch_backend() -> None:
    """UI start: connect once the backend listens; report it if it exits first."""
    proc = runtime.backend
    if proc is None or not runtime.connect_backend:
        return
    if proc.endpoint is not None:
        _backend_listening()
    elif not proc.alive:
        runtime.connect_backend = False
        report("ERROR", f"the backend exited (code {proc.proc.returncode}) before listening: "
                        f"{proc.log_tail(3) or 'see ' + str(proc.log_path)}")


def stop_backend() -> None:
    if runtime.backend is not None:
        if runtime.session is not None and runtime.session.link.address == runtime.backend.endpoint:
            disconnect()
        code = runtime.backend.stop()
        report("INFO", f"backend stopped (exit code {code})")
        runtime.backend = None


# ------------------------------------------------------------------------ timer / waiting
def pump(max_seconds: float = 0.02) -> int:
    """Dispatch waiting backend events (the UI timer's body; tests call it too)."""
    _watch_backend()
    s = runtime.session
    if s is None:
        return 0
    n = s.pump(max_seconds)
    if n:
        runtime.changed = True
    return n


def wait(job: Job, timeout: float, *, idle_timeout: float | None = None) -> Job:
    """Block until ``job`` ends (batch mode, tests); see :meth:`Session.wait`."""
    return require_session().wait(job, timeout, idle_timeout=idle_timeout)


# ------------------------------------------------------------------------ avatars
def refresh_avatars() -> Job | None:
    s = runtime.session
    if s is None or not s.online:
        return None

    def done(job: Job, ev: dict) -> None:
        if job.result is not None:
            runtime.avatars = list(job.result.get("avatars", []))
            runtime.changed = True
            sync_avatar_list()

    return s.start("list_avatars", label="list avatars", on_done=done)


def sync_avatar_list() -> None:
    """Mirror the store's avatars into the UI list (WindowManager.ffavatar_avatars)."""
    wm = bpy.context.window_manager
    if wm is None or not hasattr(wm, "ffavatar_avatars"):
        return
    items = wm.ffavatar_avatars
    items.clear()
    for a in runtime.avatars:
        it = items.add()
        it.avatar_id = str(a.get("id", ""))
        it.label = str(a.get("name") or a.get("id", ""))
        extra = f"{a.get('images', '?')} portraits"
        if a.get("personalized"):
            extra += ", personalized"
        it.info = extra


def _server_max_pixels() -> int:
    """The connected backend's pixel limit per image (its hello), else the protocol's default."""
    from .backend.protocol import Limits

    info = runtime.session.link.info if runtime.session is not None else {}
    return int((info.get("limits") or {}).get("max_pixels") or Limits().max_pixels)


def portrait_bytes(path: Path, max_pixels: int) -> bytes:
    """A portrait file's bytes, downscaled (JPEG, EXIF orientation kept) when it has more than
    ``max_pixels`` pixels: the backend refuses bigger images, users have 48 MP phone photos."""
    from . import portraits

    data = path.read_bytes()
    try:
        img = bpy.data.images.load(str(path), check_existing=False)
    except RuntimeError:
        return data          # not an image Blender reads: the backend's decoder says what is wrong
    tmp = user_dir("tmp") / f"{os.getpid()}-{time.monotonic_ns()}.jpg"
    try:
        w, h = (int(v) for v in img.size)
        if w * h <= max_pixels:
            return data
        nw, nh = portraits.fit_size(w, h, max_pixels)
        img.scale(nw, nh)
        img.filepath_raw, img.file_format = str(tmp), "JPEG"
        img.save()
        small = portraits.with_exif(tmp.read_bytes(), portraits.exif_segment(data))
    finally:
        bpy.data.images.remove(img)
        tmp.unlink(missing_ok=True)
    report("INFO", f"{path.name} is {w}x{h} ({w * h / 1e6:.0f} MP), over the backend's {max_pixels / 1e6:.0f} MP: "
                   f"sent downscaled to {nw}x{nh}")
    return small


def _read_images(paths: list[str], max_pixels: int | None = None) -> list[bytes]:
    if not paths:
        raise ValueError("add at least one portrait image")
    limit = max_pixels or _server_max_pixels()
    out = []
    for p in paths:
        path = Path(bpy.path.abspath(p))
        if not path.is_file():
            raise FileNotFoundError(f"portrait {path} does not exist")
        out.append(portrait_bytes(path, limit))
    return out


def reconstruct(paths: list[str], *, name: str = "", steps: int = 0, crop: bool = True) -> Job:
    """Build an avatar from portraits (optionally personalized for ``steps``)."""
    s = require_session()
    images = _read_images(paths)

    def done(job: Job, ev: dict) -> None:
        if job.result is not None:
            report("INFO", f"avatar {job.result.get('avatar')} built in {job.elapsed:.1f} s")
            for sc in bpy.data.scenes:
                sc.ffavatar.avatar_id = str(job.result.get("avatar", ""))
            refresh_avatars()
        else:
            job.error = name_inputs(job.error, "image", [Path(bpy.path.abspath(p)) for p in paths])
            report("ERROR" if job.state == "failed" else "INFO", f"reconstruct: {job.error}")

    return s.start("reconstruct", label="reconstruct", on_done=done, images=images, personalize_steps=int(steps),
                   name=name, crop=crop)


def personalize(avatar: str, paths: list[str], *, steps: int = 500) -> Job:
    s = require_session()
    images = _read_images(paths)

    def done(job: Job, ev: dict) -> None:
        if job.result is not None:
            r = job.result
            report("INFO", f"personalized {avatar}: PSNR {r.get('psnr_before', 0):.2f} -> {r.get('psnr_after', 0):.2f} dB")
            refresh_avatars()
        else:
            job.error = name_inputs(job.error, "image", [Path(bpy.path.abspath(p)) for p in paths])
            report("ERROR" if job.state == "failed" else "INFO", f"personalize: {job.error}")

    return s.start("personalize", label=f"personalize ({steps} steps)", on_done=done, avatar=avatar, images=images,
                   steps=int(steps))


def delete_avatar(avatar: str) -> Job:
    s = require_session()
    return s.start("delete_avatar", label="delete avatar", on_done=lambda j, e: refresh_avatars(), avatar=avatar)


# ------------------------------------------------------------------------ FLAME rig
def rig_from_wire(rig: dict) -> dict:
    """``get_rig``'s packed arrays -> numpy arrays."""
    from .backend.client import as_numpy
    from .backend.protocol import is_packed_array

    return {k: as_numpy(v) if is_packed_array(v) else v for k, v in rig.items()}


def build_rig_from(rig: dict, name: str = "FLAME", scene: bpy.types.Scene | None = None):
    """Build the FLAME rig objects from a (decoded) ``get_rig`` dict; returns ``(mesh, armature)``."""
    scene = scene or bpy.context.scene
    return rigmod.build_flame_rig(rig_from_dict(rig), name=name, collection=scene.collection)


def fetch_rig(n_expr: int | None = None, *, name: str = "FLAME", scene_name: str | None = None) -> Job:
    """Ask the backend for its head model's rig and build it in the scene when it arrives."""
    s = require_session()
    scene_name = scene_name or bpy.context.scene.name

    def done(job: Job, ev: dict) -> None:
        if job.result is None:
            report("ERROR", f"get_rig: {job.error}")
            return
        mesh, arm = build_rig_from(rig_from_wire(job.result["rig"]), name, bpy.data.scenes[scene_name])
        job.data["objects"] = (mesh.name, arm.name)
        report("INFO", f"built FLAME rig {arm.name} ({len(mesh.data.shape_keys.key_blocks) - 1} shape keys)")

    return s.start("get_rig", label="get rig", on_done=done, n_expr=n_expr)


def scene_rig(scene: bpy.types.Scene, head_model_id: str | None = None):
    """``(mesh, armature)`` of a FLAME rig in the scene, built from ``head_model_id`` when given; of
    several, the last by name (Blender names newer copies .001, .002...)."""
    objs = [o for o in scene.objects if rigmod.RIG_TAG in o]
    if head_model_id:
        objs = [o for o in objs if o[rigmod.RIG_TAG] == head_model_id]
    return rigmod.find_flame_rig(sorted(objs, key=lambda o: o.name, reverse=True))


# ------------------------------------------------------------------------ animate
class AnimateRun:
    """One animate job: frames to disk and into the scene, params into a track, keys on the rig."""

    def __init__(self, scene: bpy.types.Scene, *, name: str, frame_start: int, camera_mode: str, fmt: str,
                 key_rig: bool, use_vse: bool, distance: float, fps: float = 25.0,
                 folder: str | Path | None = None):
        self.scene_name = scene.name
        self.name = name
        self.frame_start = int(frame_start)
        self.camera_mode = camera_mode
        self.fmt = fmt
        self.key_rig = key_rig
        self.use_vse = use_vse
        self.distance = distance
        self.fps = float(fps)     # the clip's rate: driver frame i plays at i / fps seconds
        step = scenemod.scene_rate(scene) / self.fps
        self.writer = FrameWriter(Path(folder) if folder else frames_folder(name), prefix=name_prefix(name),
                                  frame_start=self.frame_start, step=step)
        self.writer.clear_old()
        self.buffer = TrackBuffer()
        self.expression_names: list[str] = []
        self.keyed_frames = 0
        self.plane: str | None = None
        self.started = time.monotonic()
        self.first_frame_s: float | None = None
        self.job: Job | None = None
        self.head_model_id: str | None = None   # key only a rig of the backend's head model
        self.paths: list[Path] | None = None     # an image sequence's files, to name them in errors
        self.frame_end_was = scene.frame_end      # the scene's end before this run (it may extend it)

    @property
    def scene(self) -> bpy.types.Scene:
        return bpy.data.scenes[self.scene_name]

    def on_event(self, job: Job, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "frame":
            i = int(ev["index"])          # the backend sends only the asked range, counted from 0
            self.writer.write(ev)
            if self.first_frame_s is None:
                self.first_frame_s = time.monotonic() - self.started
            if isinstance(ev.get("params"), dict):
                self.buffer.add(i, ev["params"])
            if self.writer.count == 1 or self.writer.count % 25 == 0:
                self.update_scene()
        elif kind == "track":
            self.fps = float(ev.get("fps", self.fps))
            params = ev.get("params") or {}
            if isinstance(params, dict) and params:
                n = int(ev.get("count", 0))
                rows = [{k: v[r] for k, v in params.items()} for r in range(n)]
                for r, p in enumerate(rows):
                    self.buffer.add(int(ev.get("start", 0)) + r, p)
            self.key()

    def on_done(self, job: Job, ev: dict) -> None:
        if job.result is not None:
            self.fps = float(job.result.get("fps", self.fps))
        if self.writer.count:
            self.update_scene(final=True)
            self.key(final=True)
        if job.result is not None:
            el = time.monotonic() - self.started
            report("INFO", f"animate: {self.writer.count} frames in {el:.1f} s "
                           f"({self.writer.count / max(el, 1e-9):.1f} frames/s) -> {self.writer.folder}")
        else:
            job.error = name_inputs(job.error, "driver frame", self.paths)
            report("ERROR" if job.state == "failed" else "INFO",
                   f"animate: {job.error} ({self.writer.count} frames kept)")

    def track(self):
        names = self.expression_names or list((runtime.session.link.info if runtime.session else {}).get(
            "expression_names", []))
        return self.buffer.to_track(fps=self.fps, expression_names=names)

    def key(self, final: bool = False) -> None:
        """Keyframe the FLAME rig (and the driver camera) with everything received so far."""
        if len(self.buffer) == 0 or (not final and len(self.buffer) == self.keyed_frames):
            return
        self.keyed_frames = len(self.buffer)
        if self.camera_mode == "DRIVER":
            self.key_camera()
        if not self.key_rig:
            return
        mesh, arm = scene_rig(self.scene, self.head_model_id)
        if arm is None:
            return
        if mesh is not None:
            self.expression_names = [kb.name for kb in mesh.data.shape_keys.key_blocks[1:]]
        track = self.track()
        rep = bake.key_flame_rig(mesh, arm, track, self.frame_start)
        rigmod.store_track(arm, track, self.frame_start)
        if final:
            report("INFO", f"FLAME rig: {rep.summary()}")

    def key_camera(self):
        track = self.track()
        cam = scenemod.key_driver_camera(self.scene, track, self.frame_start)
        if self.plane is not None and self.plane in bpy.data.objects:
            scenemod.key_plane_scale(bpy.data.objects[self.plane], track, self.frame_start, cam.data.sensor_width,
                                     self.scene)
        return cam

    def camera_object(self):
        sc = self.scene
        if self.camera_mode == "DRIVER":
            cam = bpy.data.objects.get(scenemod.DRIVER_CAMERA)
            if cam is None and len(self.buffer):
                cam = self.key_camera()
            return cam
        return sc.camera

    def update_scene(self, final: bool = False) -> None:
        sc = self.scene
        cam = self.camera_object()
        if cam is not None:
            lens = scenemod.REFERENCE_LENS if self.camera_mode == "DRIVER" else None
            self.plane = scenemod.show_frames(sc, self.writer, cam, name=self.name, distance=self.distance,
                                              lens=lens).name
            if self.camera_mode == "DRIVER" and len(self.buffer):
                scenemod.key_plane_scale(bpy.data.objects[self.plane], self.track(), self.frame_start,
                                         cam.data.sensor_width, sc)
        if final and self.use_vse:
            scenemod.frames_strip(sc, self.writer, name=self.name)
        last = self.writer.scene_range()[1]
        if sc.frame_end < last:             # extended (never shortened) to show the frames
            sc.frame_end = last
        if final and sc.frame_end > self.frame_end_was:
            report("INFO", f"scene end frame extended from {self.frame_end_was} to {sc.frame_end} for the frames")


def name_prefix(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower() or "frame"


def animate(scene: bpy.types.Scene, avatar: str, driver: str | Path, *, first: int = 0, count: int = 0,
            fps: float | None = None, camera_mode: str = "SCENE", size: int = 512, fmt: str | None = None,
            quality: int | None = None, alpha: bool = False, key_rig: bool = True, use_vse: bool = False,
            distance: float = 10.0, name: str = "FFAvatar", frame_start: int | None = None,
            crop: bool = True, folder: str | Path | None = None) -> AnimateRun:
    """Animate ``avatar`` with driver frames ``first .. first+count-1`` (count 0: to the end) of a
    clip. They land from ``frame_start`` (default the scene's start) in the clip's real timing: driver
    frame i at ``frame_start + i * scene fps / clip fps`` (clip fps: ``fps``, else the movie's own,
    else, for image sequences, the scene's). With ``camera_mode`` ``"SCENE"`` the scene camera is
    evaluated at each of those (sub)frames and sent; with ``"DRIVER"`` the driver's own camera is
    used (and keyed onto a camera object). Only the asked range is tracked and rendered."""
    s = require_session()
    if not avatar:
        raise ValueError("pick an avatar (reconstruct one first)")
    clip: DriverClip = resolve(bpy.path.abspath(str(driver)))
    frame_start = scene.frame_start if frame_start is None else int(frame_start)
    rate = scenemod.scene_rate(scene)
    fields: dict[str, Any] = {}
    if clip.kind == "images":
        clip = clip.select(first, count)
        n, clip_fps = len(clip.paths), float(fps or rate)
    else:
        movie_fps, movie_frames = scenemod.movie_info(clip.paths[0])
        clip_fps = float(fps or movie_fps or 25.0)
        if count > 0:
            n = count if not movie_frames else max(0, min(count, movie_frames - first))
        else:
            n = movie_frames - first if movie_frames else int(round((scene.frame_end - frame_start + 1) * clip_fps / rate))
        if movie_frames and first >= movie_frames:
            raise ValueError(f"{clip.paths[0].name} has {movie_frames} frames; frame offset {first} is outside it")
        fields.update(first=int(first), count=int(count), video_name=clip.paths[0].name)
    fmt = fmt or pref("frame_format", "PNG").lower()
    quality = quality or int(pref("jpeg_quality", 90))
    run = AnimateRun(scene, name=name, frame_start=frame_start, camera_mode=camera_mode, fmt=fmt, key_rig=key_rig,
                     use_vse=use_vse, distance=distance, fps=clip_fps, folder=folder)
    fields.update(avatar=avatar, size=int(size), format=fmt, quality=int(quality), alpha=bool(alpha), crop=crop,
                  fps=clip_fps)
    if camera_mode == "SCENE":
        step = rate / clip_fps
        fields["cameras"] = scenemod.camera_params(scene, scene.camera, [frame_start + i * step for i in range(max(n, 1))])
        for text in scenemod.camera_warnings(scene, scene.camera):
            report("WARNING", text)
    run.head_model_id = s.link.info.get("head_model_id") or None
    if key_rig and scene_rig(scene, run.head_model_id)[1] is None:
        fetch_rig(scene_name=scene.name)
    if clip.kind == "video":
        job = s.start("animate", label=f"animate {clip.paths[0].name}", on_event=run.on_event,
                      on_done=run.on_done, video=clip.video_bytes(), **fields)
    else:
        job = s.start("animate", label=f"animate {len(clip.paths)} frames", on_event=run.on_event,
                      on_done=run.on_done, stream=True, chunks=clip.chunks(8), **fields)
    run.job = job
    run.paths = clip.paths if clip.kind == "images" else None
    runtime.runs[job.id] = run
    return run


# ------------------------------------------------------------------------ tracks from files
def load_track_file(path: str | Path):
    """An FFAvatar track ``.npz`` (``FlameTrack.save``) -> :class:`~.track.Track` (no pickle)."""
    import json

    from .track import Track

    with np.load(bpy.path.abspath(str(path)), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != "ffavatar-track":
            raise ValueError(f"{path} is not an FFAvatar track (format {meta.get('format')!r})")
        expr = np.asarray(z["expression"], dtype=np.float64)
        arkit, arkit_names = None, []
        if "arkit" in z.files and meta.get("arkit_names"):  # scored by the face landmarker
            keep = [k for k, n in enumerate(meta["arkit_names"]) if n not in set(meta.get("arkit_unmeasured", []))]
            arkit = np.asarray(z["arkit"], dtype=np.float64)[:, keep]
            arkit_names = [meta["arkit_names"][k] for k in keep]
        return Track(arkit=arkit, arkit_names=arkit_names, expression=expr, pose=np.asarray(z["pose"], dtype=np.float64),
                     cam_rot=np.asarray(z["cam_rot"], dtype=np.float64), cam_t=np.asarray(z["cam_t"], dtype=np.float64),
                     focal=np.asarray(z["focal"], dtype=np.float64).reshape(-1),
                     indices=np.arange(expr.shape[0]), fps=float(meta.get("fps", 25.0)),
                     expression_names=list(meta.get("expression_names", [])),
                     joint_names=list(meta.get("joints", ["root", "neck", "jaw", "eye_L", "eye_R"])))


# ------------------------------------------------------------------------ retargeting
def resolve_map(key: str) -> dict:
    """A map by enum key (``builtin:<stem>``, ``user:<stem>``) or file path -> validated dict."""
    from . import retarget

    if key.startswith("builtin:"):
        maps = retarget.builtin_maps()
        stem = key.split(":", 1)[1]
        if stem not in maps:
            raise ValueError(f"no built-in map {stem!r}; built-in maps: {sorted(maps)}")
        return retarget.load(maps[stem])
    if key.startswith("user:"):
        return retarget.load(user_dir("maps") / f"{key.split(':', 1)[1]}.json")
    return retarget.load(bpy.path.abspath(key))


def export_map(key: str) -> Path:
    """Copy a map into the user's maps folder (to edit it); returns the new file's path."""
    from . import retarget

    mapping = resolve_map(key)
    stem = key.split(":", 1)[-1] if ":" in key else Path(key).stem
    path = user_dir("maps") / f"{stem}_custom.json"
    n = 1
    while path.exists():
        n += 1
        path = user_dir("maps") / f"{stem}_custom{n}.json"
    retarget.save(mapping, path)
    return path


def source_track(scene: bpy.types.Scene, arm=None):
    """``(track, frame_start, mesh, armature)`` of the FLAME rig holding the last track."""
    if arm is None:
        mesh, arm = scene_rig(scene)
    else:
        mesh, _ = rigmod.find_flame_rig([arm])
    stored = rigmod.load_track(arm) if arm is not None else None
    if stored is None:
        raise ValueError("no FLAME rig with a track in the scene: run Animate (or Import Track) first")
    return stored[0], stored[1], mesh, arm


def bake_retarget(scene: bpy.types.Scene, map_key: str, targets, source_arm=None) -> bake.BakeReport:
    """Bake the FLAME rig's track onto ``targets`` (armature and/or meshes) through a map."""
    track, start, mesh, arm = source_track(scene, source_arm)
    targets = [o for o in targets if o not in (mesh, arm)]
    if not targets:
        raise ValueError("select the target rig (its armature and/or meshes with shape keys), not the FLAME rig")
    rep = bake.bake_mapping(resolve_map(map_key), track, targets, start)
    report("INFO", f"retarget: {rep.summary()}")
    return rep


def add_pair_from_selection(flame_mesh, target) -> tuple[int, int]:
    """The one selected vertex of the FLAME mesh and of the target (edit both, select a vertex on
    each) as a correspondence pair."""
    if bpy.context.object is not None and bpy.context.object.mode == "EDIT":
        bpy.ops.object.mode_set(mode="OBJECT")
        bpy.ops.object.mode_set(mode="EDIT")  # flush the edit-mode selection into the meshes

    def selected(obj) -> int:
        sel = np.zeros(len(obj.data.vertices), dtype=bool)
        obj.data.vertices.foreach_get("select", sel)
        idx = np.flatnonzero(sel)
        if len(idx) != 1:
            raise ValueError(f"select exactly one vertex on {obj.name} (found {len(idx)})")
        return int(idx[0])

    return selected(flame_mesh), selected(target)


def autofit(scene: bpy.types.Scene, target, pairs: list[tuple[int, int]], *, source_arm=None,
            ridge: float = 1e-4) -> bake.BakeReport:
    """Solve and key the target mesh's shape-key weights from the FLAME rig's track (NNLS)."""
    track, start, mesh, arm = source_track(scene, source_arm)
    if mesh is None:
        raise ValueError("the FLAME rig's mesh is missing")
    rep = bake.bake_autofit(mesh, arm, target, pairs, track, start, ridge=ridge)
    report("INFO", f"automatic fit: {rep.summary()}")
    return rep


def import_track(scene: bpy.types.Scene, path: str, frame_start: int | None = None):
    """Key the scene's FLAME rig with a track file (``ffavatar track`` .npz)."""
    track = load_track_file(path)
    mesh, arm = scene_rig(scene)
    if arm is None:
        raise ValueError("build the FLAME rig first (Rig & Retarget > Build FLAME Rig)")
    start = scene.frame_start if frame_start is None else frame_start
    rep = bake.key_flame_rig(mesh, arm, track, start)
    rigmod.store_track(arm, track, start)
    report("INFO", f"imported {len(track)} frames: {rep.summary()}")
    return rep
