"""The public API: ``Reconstructor`` (portraits → ``Avatar``), ``Avatar`` (personalize, track, animate,
render, save) and ``FlameTrack`` (per-frame FLAME parameters and camera).

Images are RGB ``uint8 (H, W, 3)`` numpy arrays (see ``ffavatar.images`` to read files and clips).
Long operations take ``progress(fraction, message)`` and ``cancel() -> bool`` callables; a cancel
raises ``Cancelled`` between steps/frames.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_tensors, read_meta, save_tensors
from .errors import Cancelled, CheckpointError, InvalidInput, LimitExceeded
from .eval.metrics import psnr
from .flame import JOINT_NAMES, head_model_id, load_head_model
from .gaussians import Gaussians
from .face.crop import crop_portrait as face_crop
from .images import BACKGROUND, crop_portrait, to_uint8
from .model.config import ModelConfig
from .model.flame_estimator import EstimatedFlame
from .pipeline import AvatarPipeline
from .ply import write_ply
from .render import rasterize
from .render.camera import MAX_RENDER_SIZE, Camera

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None] | None
Cancel = Callable[[], bool] | None
CROP_MODES = ("detect", "center", "none")
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "demo.safetensors"
MAX_SOURCE_IMAGES = 64


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" → CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("CUDA was asked for but no CUDA device is available", hint="use --device cpu")
    return dev


def _check_cancel(cancel: Cancel) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled by the client")


def _report(progress: Progress, fraction: float, message: str) -> None:
    if progress is not None:
        progress(float(min(max(fraction, 0.0), 1.0)), message)


def _blend(a: EstimatedFlame | None, b: EstimatedFlame, w: float) -> EstimatedFlame:
    """``(1 - w) a + w b`` in every parameter (``b`` itself when ``a`` is None): for frames without a
    face between two frames with one."""
    if a is None:
        return b
    return EstimatedFlame(**{k: torch.lerp(getattr(a, k), getattr(b, k), float(w))
                             for k in ("expr", "pose", "cam_rot", "cam_t", "focal")})


def _psnr(rendered: torch.Tensor, target: torch.Tensor) -> float:
    """Mean PSNR (dB) of renders (V,H,W,3) against targets (V,H,W,3)."""
    return float(psnr(rendered.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)).mean())


# ------------------------------------------------------------------------------------ FLAME tracks
@dataclass
class FlameTrack:
    """Per-frame FLAME parameters: expression (T,E), pose (T,5,3) axis-angle (root, neck, jaw, eye_L,
    eye_R), camera rotation (T,3) axis-angle, translation (T,3), focal (T,) as a multiple of the width.

    When the clip went through the face landmarker (``ffavatar.face``) it also carries ``arkit``
    (T,52) ARKit blendshape scores named by ``arkit_names`` (``arkit_unmeasured`` lists names the
    landmarker does not score, kept at 0), ``landmarks`` (T,478,2) MediaPipe landmarks in the
    estimator's crop, normalised to [0,1] of the crop side, and ``filled`` (T,) bool: frames without
    a face whose crop and scores were interpolated from their neighbours."""

    expression: np.ndarray
    pose: np.ndarray
    cam_rot: np.ndarray
    cam_t: np.ndarray
    focal: np.ndarray
    fps: float = 25.0
    expression_names: list[str] = field(default_factory=list)
    arkit: np.ndarray | None = None
    arkit_names: list[str] = field(default_factory=list)
    arkit_unmeasured: list[str] = field(default_factory=list)
    landmarks: np.ndarray | None = None
    filled: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.expression.shape[0])

    @classmethod
    def from_estimates(cls, est: Sequence[EstimatedFlame], fps: float, names: list[str]) -> FlameTrack:
        cat = lambda k: torch.cat([getattr(e, k).detach().float().cpu() for e in est]).numpy()  # noqa: E731
        return cls(cat("expr"), cat("pose"), cat("cam_rot"), cat("cam_t"), cat("focal"), float(fps), list(names))

    def frame(self, i: int) -> dict[str, Any]:
        """One frame's parameters as plain lists (the wire/JSON form); with landmarker data also
        ``arkit`` ({ARKit name: score}, measured names only) and ``face`` ("found"/"interpolated")."""
        out: dict[str, Any] = {"expression": self.expression[i].tolist(), "pose": self.pose[i].tolist(),
                               "cam_rot": self.cam_rot[i].tolist(), "cam_t": self.cam_t[i].tolist(),
                               "focal": float(self.focal[i])}
        if self.arkit is not None:
            skip = set(self.arkit_unmeasured)
            out["arkit"] = {n: float(v) for n, v in zip(self.arkit_names, self.arkit[i]) if n not in skip}
        if self.filled is not None:
            out["face"] = "interpolated" if bool(self.filled[i]) else "found"
        return out

    @classmethod
    def from_params(cls, params: Sequence[dict[str, Any]], fps: float, names: list[str],
                    faces: Sequence[Any] | None = None) -> FlameTrack:
        """Inverse of :meth:`frame` over a clip (``AnimatedFrame.params``), plus the frames' faces."""
        if not params:
            raise InvalidInput("no frames to make a track of")
        arr = lambda k: np.array([p[k] for p in params], np.float32)  # noqa: E731
        track = cls(arr("expression"), arr("pose"), arr("cam_rot"), arr("cam_t"), arr("focal"), float(fps), list(names))
        return track.with_faces(faces) if faces and all(f is not None for f in faces) else track

    def with_faces(self, faces: Sequence[Any]) -> FlameTrack:
        """This track plus the landmarker data of its frames (``ffavatar.face.ClipFace`` per frame, in
        order); returned unchanged when the faces carry no landmarks (Haar fallback)."""
        from .face.landmarker import ARKIT_NAMES, UNMEASURED_ARKIT

        if not faces or any(f.points is None for f in faces):
            return self
        lmk = np.stack([f.box.to_crop(f.points[:, :2], 1)[:, :2] for f in faces]).astype(np.float32)
        arkit = np.stack([f.arkit for f in faces]).astype(np.float32)
        filled = np.array([f.filled for f in faces], dtype=bool)
        return FlameTrack(self.expression, self.pose, self.cam_rot, self.cam_t, self.focal, self.fps,
                          self.expression_names, arkit, list(ARKIT_NAMES), list(UNMEASURED_ARKIT), lmk, filled)

    def estimates(self, device: torch.device) -> EstimatedFlame:
        t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
        return EstimatedFlame(expr=t(self.expression), pose=t(self.pose), cam_rot=t(self.cam_rot),
                              cam_t=t(self.cam_t), focal=t(self.focal))

    def save(self, path: str | Path) -> Path:
        """``.npz`` of the arrays plus a JSON ``meta`` entry (fps, joint and expression names)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": "ffavatar-track", "version": 1, "fps": self.fps, "joints": list(JOINT_NAMES),
                "expression_names": self.expression_names}
        extra = {}
        if self.arkit is not None:
            meta.update(arkit_names=list(self.arkit_names), arkit_unmeasured=list(self.arkit_unmeasured))
            extra["arkit"] = np.asarray(self.arkit, np.float32)
        if self.landmarks is not None:
            meta["landmarks"] = "MediaPipe 478 (x, y) in the estimator's crop, normalised to [0, 1]"
            extra["landmarks"] = np.asarray(self.landmarks, np.float32)
        if self.filled is not None:
            extra["filled"] = np.asarray(self.filled, bool)
        with open(path, "wb") as f:
            np.savez(f, expression=self.expression, pose=self.pose, cam_rot=self.cam_rot, cam_t=self.cam_t,
                     focal=self.focal, meta=np.array(json.dumps(meta)), **extra)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FlameTrack:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                opt = lambda k: z[k] if k in z.files else None  # noqa: E731
                return cls(z["expression"], z["pose"], z["cam_rot"], z["cam_t"], z["focal"], float(meta["fps"]),
                           list(meta.get("expression_names", [])), opt("arkit"), list(meta.get("arkit_names", [])),
                           list(meta.get("arkit_unmeasured", [])), opt("landmarks"), opt("filled"))
        except (OSError, KeyError, ValueError) as e:
            raise CheckpointError(f"{Path(path).name} is not an FFAvatar track (.npz): {e}") from e


@dataclass
class AnimatedFrame:
    """One reenacted frame: RGB uint8 (H,W,3), alpha uint8 (H,W) and the frame's FLAME parameters;
    ``face``: the driver frame's face (``ffavatar.face.ClipFace`` without its pixels) when crop="detect"."""

    index: int
    image: np.ndarray
    alpha: np.ndarray
    params: dict[str, Any]
    face: Any = None


# ------------------------------------------------------------------------------------ reconstructor
class Reconstructor:
    """Builds avatars from portraits with a trained pipeline on one device."""

    def __init__(self, pipeline: AvatarPipeline, meta: dict[str, Any] | None = None):
        self.pipeline = pipeline.eval()
        self.meta = meta or {}
        self.image_size: int = int(self.meta.get("image_size", 128))
        self.background = torch.tensor(BACKGROUND, dtype=torch.float32, device=self.device) / 255.0

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, *, device: str | torch.device = "auto",
                        flame: str | Path | None = None, landmarks: str | Path | None = None) -> Reconstructor:
        """Load a checkpoint (default: the bundled demo checkpoint, else an untrained tiny model)."""
        dev = resolve_device(device)
        head = load_head_model(flame, landmarks)
        if path is None and DEFAULT_CHECKPOINT.is_file():
            # the bundled checkpoint belongs to the demo head; another head model needs its own training
            if read_meta(DEFAULT_CHECKPOINT).get("head_model_id") == head_model_id(head):
                path = DEFAULT_CHECKPOINT
        path = Path(path) if path is not None else None
        if path is None:
            log.warning("no checkpoint for this head model (the bundled one is for the demo head): "
                        "using an UNTRAINED tiny model; train one with 'ffavatar train'")
            n_shape = int(head["n_shape"])
            config = ModelConfig.preset("tiny").override({"n_shape": min(50, n_shape),
                                                         "n_expr": min(50, head["shapedirs"].shape[2] - n_shape)})
            pipe = AvatarPipeline(config, head)
            return cls(pipe.to(dev), {"untrained": True})
        meta = read_meta(path)
        if meta.get("kind") != "checkpoint":
            raise CheckpointError(f"{path.name} is a {meta.get('kind')!r} file, not a model checkpoint")
        config = ModelConfig.from_dict(meta.get("config", {}))
        pipe = AvatarPipeline(config, head, subdivision=int(meta.get("subdivision", 1)))
        tensors, meta = load_tensors(path, "checkpoint", pipe.head_model_id)
        missing, unexpected = pipe.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")},
                                                       strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{Path(path).name} does not fit its config: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        return cls(pipe.to(dev), meta)

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @property
    def head_model_id(self) -> str:
        return self.pipeline.head_model_id

    @property
    def expression_names(self) -> list[str]:
        return list(self.pipeline.flame.expression_names)

    @property
    def n_expr(self) -> int:
        return self.pipeline.flame.n_expr

    def prepare(self, images: Sequence[np.ndarray], crop: str = "detect") -> torch.Tensor:
        """Portraits → (V,3,S,S) float tensor on the device (crop: "detect", "center" or "none")."""
        if crop not in CROP_MODES:
            raise InvalidInput(f"crop must be one of {CROP_MODES}, got {crop!r}")
        out = []
        s = self.image_size
        for i, img in enumerate(images):
            img = np.asarray(img)
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise InvalidInput(f"image {i} must be RGB uint8 (H, W, 3), got {img.dtype} {img.shape}")
            if crop == "none":
                import cv2
                sq = cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
            elif crop == "detect":  # the face landmarker (OpenCV's detector as a logged fallback)
                sq = face_crop(img, s, name=f"image {i}", background=self.background_uint8)[0]
            else:
                sq = crop_portrait(img, s, detect=False)
            out.append(torch.from_numpy(sq).permute(2, 0, 1).float() / 255.0)
        return torch.stack(out).to(self.device)

    @property
    def background_uint8(self) -> tuple[int, int, int]:
        """The model's background as uint8 RGB: crops that reach past the image are padded with it."""
        return tuple(int(v) for v in to_uint8(self.background.float().cpu().numpy()))

    def reconstruct(self, images: Sequence[np.ndarray], *, crop: str = "detect", progress: Progress = None,
                    cancel: Cancel = None) -> Avatar:
        """1..N portraits of one person → a canonical avatar."""
        if not 1 <= len(images) <= MAX_SOURCE_IMAGES:
            raise LimitExceeded(f"reconstruct takes 1..{MAX_SOURCE_IMAGES} images, got {len(images)}")
        _report(progress, 0.0, "preparing images")
        t0 = time.perf_counter()
        src = self.prepare(images, crop)
        _check_cancel(cancel)
        _report(progress, 0.2, "reconstructing")
        with torch.no_grad():
            out = self.pipeline.net(src[None], None, None)
            canonical = out.gaussians[0]
            shape = out.shape[0] if out.shape is not None else torch.zeros(self.pipeline.flame.n_shape, device=self.device)
        _report(progress, 1.0, "done")
        hashes = [hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest()[:16] for im in images]
        meta = {"source_images": hashes, "created": time.time(), "views": len(images),
                "reconstruct_seconds": round(time.perf_counter() - t0, 4)}
        return Avatar(self, canonical, shape, meta, sources=src)

    def rig(self, n_expr: int | None = None) -> dict[str, Any]:
        """What a Blender rig needs, with no FLAME file on that side (see the API contract)."""
        fl = self.pipeline.flame
        n = fl.n_expr if n_expr is None else max(0, min(int(n_expr), fl.n_expr))
        v = fl.v_template.detach().cpu()
        expr = fl.shapedirs[:, :, fl.n_shape:fl.n_shape + n].detach().cpu().permute(2, 0, 1)
        joints = fl().joints[0].detach().cpu()
        return {"vertices": v.numpy().astype(np.float32), "faces": fl.faces.cpu().numpy().astype(np.int32),
                "expression_dirs": expr.numpy().astype(np.float32), "expression_names": fl.expression_names[:n],
                "joints": joints.numpy().astype(np.float32), "joint_names": list(JOINT_NAMES),
                "parents": fl.parents.cpu().numpy().astype(np.int32),
                "weights": fl.lbs_weights.detach().cpu().numpy().astype(np.float32),
                "head_model_id": self.head_model_id}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"config": self.pipeline.config.to_dict(), "subdivision": self.pipeline.subdivision}


# ------------------------------------------------------------------------------------ avatar
class Avatar:
    """A canonical Gaussian head of one person: Gaussians (N,) around the template and shape (S,)."""

    def __init__(self, reconstructor: Reconstructor, canonical: Gaussians, shape: torch.Tensor,
                 metadata: dict[str, Any], sources: torch.Tensor | None = None):
        self.reconstructor = reconstructor
        self.canonical = canonical
        self.shape = shape
        self.metadata = metadata
        self.sources = sources  # (V,3,S,S) prepared portraits, for personalization in this session

    @property
    def head_model_id(self) -> str:
        return self.reconstructor.head_model_id

    @property
    def pipeline(self) -> AvatarPipeline:
        return self.reconstructor.pipeline

    # -------------------------------------------------------------- personalization
    def personalize(self, images: Sequence[np.ndarray] | None = None, *, steps: int = 500, crop: str = "detect",
                    lr: float = 1.0, prior: float = 0.0, progress: Progress = None,
                    cancel: Cancel = None) -> dict[str, Any]:
        """Fine-tune the Gaussians (and each source view's FLAME parameters and camera, starting from the
        estimator's) on the source views. ``prior`` > 0 adds a pull toward the feed-forward prediction
        (on the held-out demo set, 10 kept novel-target PSNR flat while input views gained 9 dB; 0, the
        default, optimizes freely). Returns {"steps", "psnr_before", "psnr_after", "seconds", "views"}."""
        if steps < 0 or steps > 100_000:
            raise InvalidInput(f"steps must be 0..100000, got {steps}")
        src = self.reconstructor.prepare(images, crop) if images is not None else self.sources
        if src is None:
            raise InvalidInput("personalize needs the source images (this avatar was loaded from a file)")
        pipe = self.pipeline
        t0 = time.perf_counter()
        target = src.permute(0, 2, 3, 1)  # (V,S,S,3)
        v, s = src.shape[0], src.shape[-1]
        with torch.no_grad():
            est = pipe.net.estimate(src)
        params = {k: getattr(est, k).detach().clone().requires_grad_(True) for k in ("expr", "pose", "cam_rot", "cam_t", "focal")}
        g = self.canonical.detach()
        gparams = {k: getattr(g, k).clone().requires_grad_(True) for k in ("means", "quats", "log_scales", "opacity_logits", "sh")}
        groups = [
            {"params": [gparams["means"]], "lr": 1.5e-4 * lr}, {"params": [gparams["sh"]], "lr": 5e-3 * lr},
            {"params": [gparams["opacity_logits"]], "lr": 2e-2 * lr}, {"params": [gparams["log_scales"]], "lr": 5e-3 * lr},
            {"params": [gparams["quats"]], "lr": 2e-3 * lr}, {"params": list(params.values()), "lr": 1e-3 * lr},
        ]
        opt = torch.optim.Adam(groups)
        bg = self.reconstructor.background
        init = {k: p.detach().clone() for k, p in gparams.items()}
        tolerance = {"means": 2e-3, "sh": 0.1, "opacity_logits": 1.0, "log_scales": 0.5, "quats": 0.5}

        def prior_loss() -> torch.Tensor:
            return 0.01 * sum(((gparams[k] - init[k]) / t).square().mean() for k, t in tolerance.items())

        def render() -> torch.Tensor:
            e = EstimatedFlame(**params)
            canon = Gaussians(**gparams)
            return pipe.render(canon, e, self.shape[None], pipe.cameras(e, s, s), bg).rgb

        with torch.no_grad():
            before = _psnr(render(), target)
        for step in range(steps):
            _check_cancel(cancel)
            loss = F.l1_loss(render(), target)
            if prior:
                loss = loss + prior * prior_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 10 == 0 or step == steps - 1:
                _report(progress, (step + 1) / max(steps, 1), f"personalize step {step + 1}/{steps} loss {loss.item():.4f}")
        with torch.no_grad():
            after = _psnr(render(), target)
        self.canonical = Gaussians(**{k: p.detach() for k, p in gparams.items()})
        result = {"steps": steps, "psnr_before": round(before, 3), "psnr_after": round(after, 3),
                  "seconds": round(time.perf_counter() - t0, 3), "views": v}
        self.metadata.setdefault("personalization", []).append(result)
        return result

    # -------------------------------------------------------------- driving
    def _estimate(self, frames: Iterable[np.ndarray], crop: str, cancel: Cancel
                  ) -> Iterator[tuple[int, EstimatedFlame, Any]]:
        """(index, estimate, ClipFace or None) per driver frame. With crop="detect" the face is followed
        through the clip (smoothed crops; frames without a face are interpolated and named in a warning)."""
        rec = self.reconstructor
        if crop == "detect":
            from .face.crop import FaceCropper

            def checked() -> Iterator[np.ndarray]:
                for frame in frames:
                    _check_cancel(cancel)
                    yield frame
            held: list[Any] = []  # frames without a face, waiting for the next frame with one
            last: EstimatedFlame | None = None
            last_i = -1
            for cf in FaceCropper(name="the driver clip").run(checked()):
                if cf.filled:
                    held.append(cf)
                    continue
                x = rec.prepare([cf.crop(rec.image_size, rec.background_uint8)], "none")
                with torch.no_grad():
                    est = self.pipeline.net.estimate(x)
                for h in held:  # their parameters: interpolated between the faces around them
                    yield h.index, _blend(last, est, (h.index - last_i) / (cf.index - last_i)), h
                held = []
                last, last_i = est, cf.index
                yield cf.index, est, cf
            for h in held:  # the clip ended without a face: hold the last one
                yield h.index, last, h
            return
        for i, frame in enumerate(frames):
            _check_cancel(cancel)
            x = rec.prepare([frame], crop)
            with torch.no_grad():
                yield i, self.pipeline.net.estimate(x), None

    def track(self, frames: Iterable[np.ndarray], *, fps: float = 25.0, crop: str = "detect",
              progress: Progress = None, cancel: Cancel = None) -> FlameTrack:
        """Predict FLAME expression, pose and camera for every driver frame."""
        est, faces = [], []
        for i, e, cf in self._estimate(frames, crop, cancel):
            est.append(e)
            faces.append(cf)
            _report(progress, 0.0, f"tracked frame {i + 1}")
        if not est:
            raise InvalidInput("the driver clip has no frames")
        track = FlameTrack.from_estimates(est, fps, self.reconstructor.expression_names)
        return track.with_faces(faces) if all(f is not None for f in faces) else track

    def _render_one(self, est: EstimatedFlame, camera: Camera | None, size: int) -> tuple[np.ndarray, np.ndarray]:
        pipe = self.pipeline
        cam = camera.to(self.reconstructor.device) if camera is not None else pipe.cameras(est, size, size)
        with torch.no_grad():
            posed = pipe.pose(self.canonical, est, self.shape[None])[0]
            out = rasterize(posed, cam, self.reconstructor.background)
        return to_uint8(out.rgb[0].float().cpu().numpy()), to_uint8(out.alpha[0, ..., 0].float().cpu().numpy())

    def animate(self, frames: Iterable[np.ndarray], *, size: int = 512,
                camera: Callable[[int], Camera | None] | None = None, crop: str = "detect",
                cancel: Cancel = None) -> Iterator[AnimatedFrame]:
        """Reenact: per driver frame, estimate FLAME + camera, pose and render (one frame at a time).

        crop="detect" follows the face with the landmarker: smoothed crops, and frames without a face
        are interpolated from their neighbours (a warning names them) instead of stopping the run."""
        if not 16 <= size <= MAX_RENDER_SIZE:
            raise LimitExceeded(f"size must be 16..{MAX_RENDER_SIZE}, got {size}")
        names = self.reconstructor.expression_names
        for i, est, cf in self._estimate(frames, crop, cancel):
            cam = camera(i) if camera is not None else None
            image, alpha = self._render_one(est, cam, size)
            track = FlameTrack.from_estimates([est], 25.0, names)
            if cf is not None:
                track = track.with_faces([cf])
                cf = cf.without_pixels()
            yield AnimatedFrame(i, image, alpha, track.frame(0), cf)

    def render(self, track: FlameTrack, cameras: Camera | None = None, *, size: int = 512) -> np.ndarray:
        """Render a track: (T,H,W,3) uint8 from its own cameras, or from ``cameras`` (1 or T)."""
        est = track.estimates(self.reconstructor.device)
        frames = []
        for i in range(len(track)):
            e = EstimatedFlame(**{k: getattr(est, k)[i:i + 1] for k in ("expr", "pose", "cam_rot", "cam_t", "focal")})
            cam = None if cameras is None else cameras[min(i, len(cameras) - 1)]
            frames.append(self._render_one(e, cam, size)[0])
        return np.stack(frames)

    def turntable(self, n: int = 36, size: int = 256, radius: float = 0.65, elevation: float = 5.0) -> np.ndarray:
        """(n,size,size,3) uint8 frames orbiting the neutral avatar."""
        pipe = self.pipeline
        zeros = EstimatedFlame(expr=torch.zeros(1, pipe.flame.n_expr, device=self.reconstructor.device),
                               pose=torch.zeros(1, 5, 3, device=self.reconstructor.device),
                               cam_rot=torch.zeros(1, 3), cam_t=torch.zeros(1, 3), focal=torch.ones(1))
        with torch.no_grad():
            posed = pipe.pose(self.canonical, zeros, self.shape[None])[0]
            center = posed.means.mean(0).cpu()
            cams = Camera.orbit(n, radius, elevation, center, focal=1.8 * size, width=size, height=size,
                                device=self.reconstructor.device)
            out = rasterize(posed, cams, self.reconstructor.background)
        return to_uint8(out.rgb.float().cpu().numpy())

    # -------------------------------------------------------------- files
    def neutral_gaussians(self) -> Gaussians:
        """The avatar with its identity shape applied, neutral expression and pose (N,)."""
        pipe = self.pipeline
        with torch.no_grad():
            return pipe.animator(self.canonical, shape=self.shape[None, : pipe.flame.n_shape])[0]

    def to_ply(self, path: str | Path) -> Path:
        """Standard 3DGS PLY of the neutral avatar (opens in common splat viewers)."""
        path = Path(path)
        write_ply(path, self.neutral_gaussians().detach().to("cpu", torch.float32))
        return path

    def save(self, path: str | Path) -> Path:
        """``.ffa``: safetensors of the canonical Gaussians and shape + JSON metadata."""
        tensors = {**self.canonical.state_dict("gaussians."), "shape": self.shape}
        meta = {"kind": "avatar", "format_version": 1, "head_model_id": self.head_model_id,
                "model": self.reconstructor.checkpoint_meta(), "avatar": self.metadata}
        return save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, reconstructor: Reconstructor) -> Avatar:
        """Load a ``.ffa``; HeadModelMismatch when it was built on another head model."""
        tensors, meta = load_tensors(path, "avatar", reconstructor.head_model_id, reconstructor.device)
        try:
            canonical = Gaussians.from_state_dict(tensors, "gaussians.")
            shape = tensors["shape"]
        except KeyError as e:
            raise CheckpointError(f"{Path(path).name} lacks {e}") from e
        if canonical.num_points != reconstructor.pipeline.animator.num_points:
            raise CheckpointError(f"{Path(path).name} has {canonical.num_points} Gaussians; this model makes "
                                  f"{reconstructor.pipeline.animator.num_points}", hint="load it with the checkpoint it was made with")
        return cls(reconstructor, canonical, shape, dict(meta.get("avatar", {})))


def save_checkpoint(path: str | Path, pipeline: AvatarPipeline, extra: dict[str, Any] | None = None) -> Path:
    """Write the network weights of ``pipeline`` with its config and head-model id."""
    tensors = {f"net.{k}": v for k, v in pipeline.net.state_dict().items()}
    meta = {"kind": "checkpoint", "format_version": 1, "head_model_id": pipeline.head_model_id,
            "config": pipeline.config.to_dict(), "subdivision": pipeline.subdivision, **(extra or {})}
    return save_tensors(path, tensors, meta)
