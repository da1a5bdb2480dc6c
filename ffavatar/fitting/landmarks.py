"""Landmark-based FLAME fitting: camera, pose, shape and expression from MediaPipe's 478 landmarks.

Correspondence: the head model's landmark embedding (``FlameModel.landmarks``) is matched to
MediaPipe points by a fixed table. For a 68-point iBUG embedding (the demo head's, FLAME's
``flame_static_embedding`` + contour, DECA's ``landmark_embedding``) that is
:data:`IBUG68_FROM_MEDIAPIPE`; for FLAME's own ``mediapipe_landmark_embedding.npz`` the file's
``landmark_indices`` name the MediaPipe point of each embedded landmark.

Fitting (per frame, jointly over a clip): a robust (Huber) 2D reprojection loss in units of the
face size, a Gaussian prior on expression and shape, a pull toward the initial (estimator) pose,
and temporal smoothness (squared first and second differences of every per-frame parameter), in
the spirit of the optimisation trackers that FLAME avatars are usually driven by (e.g. Zielonka et
al., "Towards Metrical Reconstruction of Human Faces", ECCV 2022; Qian et al., VHAP 2024). Cameras
use the estimator's parametrization through :meth:`EstimatedFlame.camera` (one source), so the
fitted parameters drop into the same tracks, renders and rigs.

Error metric: mean point-to-point distance over the corresponding landmarks divided by the face
size ``sqrt(w * h)`` of the target landmarks' bounding box, in percent (NME_box, as in the
Menpo/AFLW benchmarks).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from ..errors import InvalidInput
from ..flame.model import FlameModel
from ..model.config import EstimatorConfig
from ..model.flame_estimator import EstimatedFlame
from ..render.camera import Camera

log = logging.getLogger(__name__)

IBUG68_FROM_MEDIAPIPE = np.array([
    # 0-16 jaw line, from the subject's right (image left) over the chin (8) to the left
    132, 215, 138, 135, 169, 170, 140, 148, 152, 377, 369, 395, 394, 364, 367, 435, 361,
    # 17-21 right brow (outer -> inner), 22-26 left brow (inner -> outer)
    46, 53, 52, 65, 55, 285, 295, 282, 283, 276,
    # 27-30 nose bridge down to the tip, 31-35 nostrils and columella (right -> left)
    168, 197, 5, 1, 99, 242, 2, 462, 328,
    # 36-41 right eye (outer corner, upper lid x2, inner corner, lower lid x2), 42-47 left eye
    33, 160, 158, 173, 153, 144, 398, 385, 387, 263, 373, 380,
    # 48-59 outer lips (right corner, upper lip, left corner, lower lip back)
    61, 73, 72, 11, 302, 303, 306, 405, 314, 17, 84, 181,
    # 60-67 inner lips (right corner, upper, left corner, lower)
    62, 81, 13, 311, 308, 316, 14, 86,
], dtype=np.int64)
"""MediaPipe landmark index for each of the 68 iBUG 300-W points of the demo head's embedding.

Derived by :func:`ffavatar.fitting.calibrate.derive_ibug68_table`: the MediaPipe point nearest to
each embedded landmark over 53 synthetic renders (6 identities, expressions, yaw up to 35 deg),
chosen in mirror pairs (MediaPipe's mesh is symmetric) without repeats. Mean residual 3.4% of the
face size (jaw line 4-8%, eyes 1.4-2.3%, mouth 1.7-3.5%). It serves any 68-point iBUG embedding;
a licensed FLAME is better served by its own ``mediapipe_landmark_embedding.npz``."""

IBUG68_WEIGHTS = np.concatenate([np.full(17, 0.5), np.ones(51)]).astype(np.float32)
"""Jaw-line points weigh half: on real faces they are silhouette points, on meshes fixed vertices."""

IBUG68_REGIONS = {"jaw": range(0, 17), "brows": range(17, 27), "nose": range(27, 36), "eyes": range(36, 48),
                  "mouth": range(48, 68)}
IBUG68_EYE_CORNERS = (36, 39, 42, 45)
IBUG68_MOUTH_CORNERS = (48, 54)


@dataclass
class Correspondence:
    """Which MediaPipe point (``mediapipe (L,)``) matches each of the head's L embedded landmarks,
    with per-landmark ``weights (L,)``."""

    mediapipe: np.ndarray
    weights: np.ndarray

    @classmethod
    def for_head(cls, flame: FlameModel, landmark_indices: np.ndarray | None = None) -> Correspondence:
        """The head's correspondence: ``landmark_indices`` (FLAME's MediaPipe embedding) when given or
        kept on the model, else the iBUG-68 table for a 68-point embedding.

        Raises InvalidInput when the head has no landmark embedding or one of another size."""
        n = int(flame.lmk_vertices.shape[0])
        idx = landmark_indices if landmark_indices is not None else getattr(flame, "landmark_indices", None)
        if idx is not None:
            idx = np.asarray(idx.cpu() if isinstance(idx, Tensor) else idx, dtype=np.int64).reshape(-1)
            if len(idx) != n or idx.min() < 0 or idx.max() >= 478:
                raise InvalidInput(f"landmark_indices has {len(idx)} entries in 0..{idx.max()}; the head embeds {n} "
                                   "landmarks and MediaPipe has 478 points")
            return cls(idx, np.ones(n, np.float32))
        if n == 68:
            return cls(IBUG68_FROM_MEDIAPIPE.copy(), IBUG68_WEIGHTS.copy())
        if n == 0:
            raise InvalidInput("the head model has no landmark embedding, so landmarks cannot be fitted",
                               hint="supply FLAME's mediapipe_landmark_embedding.npz or a 68-point embedding "
                                    "(--flame-landmarks)")
        raise InvalidInput(f"the head model embeds {n} landmarks; landmark fitting knows 68-point iBUG embeddings "
                           "and FLAME's MediaPipe embedding (with its landmark_indices)")


def face_size(points: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """``sqrt(w * h)`` of the bounding box of 2D ``points`` (..., L, 2): the NME_box normaliser."""
    lo, hi = points.min(-2), points.max(-2)
    if isinstance(points, Tensor):
        lo, hi = lo.values, hi.values
        return ((hi - lo).prod(-1)).clamp_min(1e-12).sqrt()
    return np.sqrt(np.maximum(np.prod(hi - lo, axis=-1), 1e-12))


def landmark_error(pred: Tensor | np.ndarray, target: Tensor | np.ndarray,
                   weights: np.ndarray | None = None) -> np.ndarray:
    """Per-frame landmark error in percent of the face size: (T, L, 2) predicted and target points
    (same pixels) -> (T,) mean (optionally weighted) point distance / ``face_size(target)`` x 100."""
    p = np.asarray(pred.detach().cpu() if isinstance(pred, Tensor) else pred, dtype=np.float64)
    t = np.asarray(target.detach().cpu() if isinstance(target, Tensor) else target, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 3 or p.shape[-1] != 2:
        raise InvalidInput(f"landmark_error needs two (T, L, 2) arrays, got {p.shape} and {t.shape}")
    d = np.linalg.norm(p - t, axis=-1)
    w = np.ones(d.shape[-1]) if weights is None else np.asarray(weights, dtype=np.float64)
    return 100.0 * (d * w).sum(-1) / w.sum() / face_size(t)


@dataclass
class FitConfig:
    """Weights and schedule of :func:`fit_flame` (losses in face-size units)."""

    rigid_steps: int = 80
    steps: int = 200
    lr: float = 0.02
    huber: float = 0.03          # reprojection residuals beyond this (face sizes) count linearly
    expression_prior: float = 1e-3
    shape_prior: float = 1e-3
    pose_prior: float = 1e-2     # neck and jaw pulled toward the initial pose (radians^2)
    smooth_velocity: float = 0.1   # squared first differences (per-frame parameters, their units)
    smooth_acceleration: float = 1.0  # squared second differences
    fit_shape: bool = True
    fit_focal: bool = False

    def __post_init__(self) -> None:
        if self.rigid_steps < 0 or self.steps < 0 or self.lr <= 0 or self.huber <= 0:
            raise InvalidInput("FitConfig needs steps >= 0, lr > 0 and huber > 0")


@dataclass
class LandmarkFit:
    """Result of :func:`fit_flame`: ``estimates`` (T) fitted FLAME + camera, ``shape`` (n_shape,),
    ``projected`` (T, L, 2) fitted landmarks in pixels, ``error`` (T,) % of face size after and
    ``error_before`` (T,) for the initial parameters, ``correspondence``."""

    estimates: EstimatedFlame
    shape: Tensor
    projected: Tensor
    error: np.ndarray
    error_before: np.ndarray
    correspondence: Correspondence


def landmark_model(flame: FlameModel) -> FlameModel:
    """A FLAME model of just the landmark triangles' vertices plus five joint proxies, whose
    landmarks and joints equal ``flame``'s for every shape, expression and pose (exactly: the proxies
    carry ``J_regressor @ v_template`` and ``J_regressor @ shapedirs`` and regress to themselves), so
    fitting runs the same LBS (``FlameModel``) on ~200 instead of thousands of vertices."""
    lv = flame.lmk_vertices.cpu().numpy()
    if lv.shape[0] == 0:
        raise InvalidInput("the head model has no landmark embedding")
    used, inverse = np.unique(lv.reshape(-1), return_inverse=True)
    u = len(used)
    n = lambda x: x.detach().cpu().double().numpy()  # noqa: E731
    jr, vt, sd = n(flame.J_regressor), n(flame.v_template), n(flame.shapedirs)
    posedirs = n(flame.posedirs).reshape(36, -1, 3)[:, used].transpose(1, 2, 0)  # (U, 3, 36)
    parents = flame.parents.cpu().numpy().astype(np.int64)
    kintree = np.stack([np.where(parents < 0, 4294967295, parents), np.arange(len(parents))]).astype(np.int64)
    nj = jr.shape[0]
    weights = np.concatenate([n(flame.lbs_weights)[used], np.eye(nj)])
    model = {
        "v_template": np.concatenate([vt[used], jr @ vt]),
        "shapedirs": np.concatenate([sd[used], np.einsum("jv,vck->jck", jr, sd)]),
        "posedirs": np.concatenate([posedirs, np.zeros((nj, 3, 36))]),
        "J_regressor": np.concatenate([np.zeros((nj, u)), np.eye(nj)], axis=1),
        "weights": weights, "kintree_table": kintree,
        "f": inverse.reshape(-1, 3).astype(np.int64), "n_shape": np.array(flame.n_shape),
        "lmk_face_idx": np.arange(lv.shape[0]), "lmk_b_coords": n(flame.lmk_bary),
        "expression_names": np.array(flame.expression_names),
    }
    sub = FlameModel(model, n_shape=flame.n_shape, n_expr=flame.n_expr, model_id=flame.model_id,
                     dtype=flame.v_template.dtype)
    return sub.to(flame.v_template.device)


def default_init(t: int, n_expr: int, device=None, dtype=torch.float32) -> EstimatedFlame:
    """A neutral start: zero expression and pose, the untrained estimator's frontal camera
    (``EstimatorConfig`` defaults)."""
    cfg = EstimatorConfig()
    z = lambda *s: torch.zeros(*s, device=device, dtype=dtype)  # noqa: E731
    cam_t = z(t, 3)
    cam_t[:, 2] = cfg.init_cam_distance
    return EstimatedFlame(expr=z(t, n_expr), pose=z(t, 5, 3), cam_rot=z(t, 3), cam_t=cam_t,
                          focal=torch.full((t,), cfg.init_focal, device=device, dtype=dtype))


def project_landmarks(flame: FlameModel, est: EstimatedFlame, shape: Tensor | None, width: int,
                      height: int) -> Tensor:
    """The head's embedded landmarks posed by ``est`` (T) and projected: (T, L, 2) pixels."""
    t = est.expr.shape[0]
    sh = None if shape is None else shape.reshape(1, -1).expand(t, -1)
    out = flame(shape=sh, expression=est.expr, pose=est.pose)
    if out.landmarks is None:
        raise InvalidInput("the head model has no landmark embedding")
    k, viewmat = est.camera(width, height)
    return Camera(K=k, viewmat=viewmat, width=width, height=height).project(out.landmarks)


def _second_diff(x: Tensor) -> Tensor:
    return x[2:] - 2 * x[1:-1] + x[:-2]


def _rigid_start(flame: FlameModel, est: EstimatedFlame, shape: Tensor | None, target: Tensor, w: Tensor,
                 width: int, height: int) -> EstimatedFlame:
    """Move each frame's camera so that the projected landmarks' weighted centroid and spread match
    the target's (three closed-form passes: depth from the spread ratio, then x/y from the centroid)."""
    cam_t = est.cam_t.clone()
    for _ in range(3):
        cur = EstimatedFlame(est.expr, est.pose, est.cam_rot, cam_t, est.focal, est.shape)
        with torch.no_grad():
            p = project_landmarks(flame, cur, shape, width, height)
        wn = (w / w.sum())[None, :, None]
        cp, ct = (p * wn).sum(1), (target * wn).sum(1)
        sp = (((p - cp[:, None]) ** 2).sum(-1) * wn[..., 0]).sum(1).sqrt()
        st = (((target - ct[:, None]) ** 2).sum(-1) * wn[..., 0]).sum(1).sqrt()
        z = cam_t[:, 2] * (sp / st.clamp_min(1e-6))
        f = est.focal * width
        # camera-frame shift that moves the projected centroid onto the target's at depth z
        shift_x = (ct[:, 0] - cp[:, 0]) * z / f
        shift_y = (ct[:, 1] - cp[:, 1]) * z / f
        cam_t = torch.stack([cam_t[:, 0] + shift_x, cam_t[:, 1] + shift_y, z], dim=-1)
    return EstimatedFlame(est.expr, est.pose, est.cam_rot, cam_t, est.focal, est.shape)


@contextlib.contextmanager
def _one_thread():
    """Small tensors: one intra-op thread is ~10x faster than two on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def fit_flame(landmarks: Tensor | np.ndarray, flame: FlameModel, width: int, height: int | None = None, *,
              init: EstimatedFlame | None = None, shape: Tensor | None = None, valid: np.ndarray | None = None,
              correspondence: Correspondence | None = None, config: FitConfig | None = None) -> LandmarkFit:
    """Fit FLAME expression, neck/jaw pose, camera (and a shared shape) to a clip's landmarks.

    Args:
        landmarks: (T, 478, 2) or (T, 478, 3) MediaPipe landmarks in pixels of a ``width`` x ``height``
            image (the crop the cameras refer to).
        flame: the head model (with a landmark embedding).
        init: starting parameters (T) — the estimator's, typically; default :func:`default_init`.
            Root and eye poses stay as given; cameras, neck, jaw and expression are fitted.
        shape: starting identity shape (n_shape,) (default zeros); fitted when ``config.fit_shape``.
        valid: (T,) bool, frames whose landmarks are measured (others follow from smoothness only).
        correspondence: default :meth:`Correspondence.for_head`.
    Returns:
        :class:`LandmarkFit`.
    """
    with _one_thread():
        return _fit(landmarks, flame, width, width if height is None else height, init, shape, valid,
                    correspondence, config or FitConfig())


def _fit(landmarks, flame: FlameModel, width: int, height: int, init: EstimatedFlame | None, shape: Tensor | None,
         valid: np.ndarray | None, correspondence: Correspondence | None, cfg: FitConfig) -> LandmarkFit:
    dev, dt = flame.v_template.device, flame.v_template.dtype
    lm = torch.as_tensor(np.asarray(landmarks), dtype=dt, device=dev) if not isinstance(landmarks, Tensor) \
        else landmarks.to(dev, dt)
    if lm.ndim != 3 or lm.shape[1] != 478 or lm.shape[2] not in (2, 3):
        raise InvalidInput(f"landmarks must be (T, 478, 2|3) MediaPipe points, got {tuple(lm.shape)}")
    t = lm.shape[0]
    corr = correspondence or Correspondence.for_head(flame)
    flame = landmark_model(flame)
    target = lm[:, torch.as_tensor(corr.mediapipe, device=dev), :2]
    w = torch.as_tensor(corr.weights, device=dev, dtype=dt)
    frame_w = torch.ones(t, device=dev, dtype=dt) if valid is None else torch.as_tensor(
        np.asarray(valid, dtype=np.float32), device=dev, dtype=dt)
    if float(frame_w.sum()) == 0:
        raise InvalidInput("no frame has measured landmarks")
    size = face_size(target).detach()
    size = torch.where(frame_w > 0, size, size[frame_w > 0].mean())
    init = init or default_init(t, flame.n_expr, dev, dt)
    if init.expr.shape[0] != t:
        raise InvalidInput(f"init has {init.expr.shape[0]} frames, the landmarks {t}")
    init = EstimatedFlame(**{f.name: (None if getattr(init, f.name) is None else getattr(init, f.name).to(dev, dt))
                             for f in fields(EstimatedFlame)})
    shape0 = torch.zeros(flame.n_shape, device=dev, dtype=dt) if shape is None else shape.reshape(-1)[:flame.n_shape].to(dev, dt)
    with torch.no_grad():
        before = landmark_error(project_landmarks(flame, init, shape0, width, height), target, corr.weights)
    start = _rigid_start(flame, init, shape0, target, w, width, height)

    params = {"cam_rot": start.cam_rot.clone(), "cam_t": start.cam_t.clone(), "expr": start.expr.clone(),
              "neck_jaw": start.pose[:, 1:3].clone(), "shape": shape0.clone(), "focal": start.focal.clone()}
    pose0 = start.pose.detach()

    def current() -> EstimatedFlame:
        pose = torch.cat([pose0[:, :1], params["neck_jaw"], pose0[:, 3:]], dim=1)
        return EstimatedFlame(params["expr"], pose, params["cam_rot"], params["cam_t"], params["focal"], init.shape)

    def loss_fn(rigid: bool) -> Tensor:
        est = current()
        p = project_landmarks(flame, est, params["shape"], width, height)
        r = (p - target).norm(dim=-1) / size[:, None]
        hub = torch.where(r < cfg.huber, 0.5 * r * r, cfg.huber * (r - 0.5 * cfg.huber))
        data = (hub * w).sum(-1) / w.sum()
        loss = (data * frame_w).sum() / frame_w.sum() / (cfg.huber ** 2)
        per_frame = [params["cam_rot"], params["cam_t"] / 0.1]
        if not rigid:
            per_frame += [params["expr"], params["neck_jaw"].flatten(1)]
            loss = loss + cfg.expression_prior * params["expr"].square().sum(-1).mean()
            loss = loss + cfg.pose_prior / 0.01 * (params["neck_jaw"] - pose0[:, 1:3]).square().sum((-1, -2)).mean()
            loss = loss + cfg.shape_prior * params["shape"].square().sum()
        if t > 1:
            for x in per_frame:
                loss = loss + cfg.smooth_velocity * (x[1:] - x[:-1]).square().sum(-1).mean()
                if t > 2:
                    loss = loss + cfg.smooth_acceleration * _second_diff(x).square().sum(-1).mean()
        return loss

    for stage, steps in (("rigid", cfg.rigid_steps), ("full", cfg.steps)):
        names = ["cam_rot", "cam_t"] + (["expr", "neck_jaw"] + (["shape"] if cfg.fit_shape else [])
                                         if stage == "full" else [])
        if cfg.fit_focal and stage == "full":
            names.append("focal")
        for k in params:
            params[k].requires_grad_(k in names)
        opt = torch.optim.Adam([params[k] for k in names], lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=cfg.lr * 0.05)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(stage == "rigid")
            loss.backward()
            opt.step()
            sched.step()
    for v in params.values():
        v.requires_grad_(False)
    est = current().detach()
    with torch.no_grad():
        proj = project_landmarks(flame, est, params["shape"], width, height)
    err = landmark_error(proj, target, corr.weights)
    log.info("landmark fit over %d frame(s): error %.2f%% -> %.2f%% of the face size (median)", t,
             float(np.median(before)), float(np.median(err)))
    return LandmarkFit(est, params["shape"].detach(), proj, err, before, corr)


def fit_track(landmarks: np.ndarray, init, flame: FlameModel, size: int, *, shape: Tensor | None = None,
              config: FitConfig | None = None, landmark_indices: np.ndarray | None = None):
    """Refine a :class:`~ffavatar.api.FlameTrack` on landmarks: ``(T, 478, 2)`` in pixels of the
    ``size`` px estimator crop (``track.landmarks * size``). ``landmark_indices``: the head dict's
    ``landmark_indices`` when its embedding is FLAME's MediaPipe one (``load_head_model(...)``).
    Returns ``(FlameTrack, LandmarkFit)``: the fitted track keeps the input's fps, names and
    landmarker data."""
    from ..api import FlameTrack

    est = init.estimates(flame.v_template.device)
    valid = None if init.filled is None else ~np.asarray(init.filled, bool)
    corr = Correspondence.for_head(flame, landmark_indices)
    res = fit_flame(landmarks, flame, size, size, init=est, shape=shape, valid=valid, correspondence=corr, config=config)
    e = res.estimates
    n = lambda x: x.detach().float().cpu().numpy()  # noqa: E731
    out = FlameTrack(n(e.expr), n(e.pose), n(e.cam_rot), n(e.cam_t), n(e.focal), init.fps, list(init.expression_names),
                     init.arkit, list(init.arkit_names), list(init.arkit_unmeasured), init.landmarks, init.filled)
    return out, res
