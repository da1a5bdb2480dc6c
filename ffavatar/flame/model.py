"""``FlameModel``: FLAME shape/expression blendshapes, pose correctives and linear blend skinning.

The skinning uses smplx's LBS building blocks (``batch_rodrigues``, ``batch_rigid_transform``,
``blend_shapes``, ``vertices2joints``), so results equal ``smplx.lbs.lbs``; it also returns the
per-vertex skinning transforms, which posing Gaussians needs (their rotations follow the surface).
The same class serves the original mesh and its subdivisions (dense Gaussian anchors), whose
``J_regressor`` is zero on new points so the skeleton is unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from smplx.lbs import batch_rigid_transform, batch_rodrigues, blend_shapes, vertices2joints
from torch import Tensor, nn

from ..errors import InvalidInput
from .io import NUM_JOINTS, load_model_file

JOINT_NAMES = ("root", "neck", "jaw", "eye_L", "eye_R")
"""FLAME joint order; pose tensors are (B, 5, 3) axis-angle in this order."""

_HASHED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")


def head_model_id(model: dict[str, np.ndarray]) -> str:
    """Stable id of a head model: sha256 over its validated arrays (first 16 hex digits)."""
    h = hashlib.sha256()
    for key in _HASHED_KEYS:
        a = np.ascontiguousarray(model[key])
        h.update(key.encode())
        h.update(str(a.shape).encode())
        h.update(a.astype(np.float64 if a.dtype.kind == "f" else np.int64).tobytes())
    return h.hexdigest()[:16]


@dataclass
class FlameOutput:
    """Posed FLAME: vertices (B,V,3), joints (B,5,3), landmarks (B,L,3) or None, and when asked
    the rest-pose surface before skinning (blendshapes + correctives + offsets) ``rest (B,V,3)`` and
    the skinning transforms per vertex: rotations (B,V,3,3), translations (B,V,3), so that
    ``vertices = rotations @ rest + translations``."""

    vertices: Tensor
    joints: Tensor
    landmarks: Tensor | None = None
    rest: Tensor | None = None
    rotations: Tensor | None = None
    translations: Tensor | None = None


class FlameModel(nn.Module):
    """FLAME head model as a module; all model arrays are registered buffers.

    Args:
        model: a validated FLAME dict (``ffavatar.flame.io.validate`` / ``load_model_file``).
        n_shape, n_expr: how many identity / expression components to use (default: all the file has).
        dtype: floating dtype of the buffers (float64 for exact comparisons).
        model_id: head-model id to report (default: hash of ``model``); subdivided models keep their
            base model's id.
    """

    def __init__(self, model: dict[str, np.ndarray], n_shape: int | None = None, n_expr: int | None = None,
                 model_id: str | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        total = model["shapedirs"].shape[2]
        file_shape = int(model["n_shape"]) if "n_shape" in model else min(300, total)
        file_expr = total - file_shape
        n_shape = file_shape if n_shape is None else n_shape
        n_expr = file_expr if n_expr is None else n_expr
        if not 0 <= n_shape <= file_shape or not 0 <= n_expr <= file_expr:
            raise InvalidInput(f"asked for {n_shape} shape / {n_expr} expression components; the head model "
                               f"has {file_shape} / {file_expr}")
        self.n_shape, self.n_expr = n_shape, n_expr
        self.model_id = model_id or head_model_id(model)
        names = model.get("expression_names")
        self.expression_names = ([str(s) for s in names[:n_expr]] if names is not None
                                 else [f"exp{i:03d}" for i in range(n_expr)])
        f32 = dtype
        sd = model["shapedirs"]
        self.register_buffer("v_template", torch.as_tensor(model["v_template"], dtype=f32))
        self.register_buffer("shapedirs", torch.as_tensor(
            np.concatenate([sd[:, :, :n_shape], sd[:, :, file_shape:file_shape + n_expr]], axis=2), dtype=f32))
        v = len(model["v_template"])
        self.register_buffer("posedirs", torch.as_tensor(model["posedirs"].reshape(v * 3, 36).T, dtype=f32))
        self.register_buffer("J_regressor", torch.as_tensor(model["J_regressor"], dtype=f32))
        self.register_buffer("lbs_weights", torch.as_tensor(model["weights"], dtype=f32))
        parents = model["kintree_table"][0].astype(np.int64).copy()
        parents[0] = -1
        self.register_buffer("parents", torch.as_tensor(parents))
        self.register_buffer("faces", torch.as_tensor(model["f"], dtype=torch.long))
        has_lmk = "lmk_face_idx" in model
        self.register_buffer("lmk_vertices", torch.as_tensor(
            model["f"][model["lmk_face_idx"]] if has_lmk else np.zeros((0, 3), np.int64), dtype=torch.long))
        self.register_buffer("lmk_bary", torch.as_tensor(
            model["lmk_b_coords"] if has_lmk else np.zeros((0, 3)), dtype=f32))

    @classmethod
    def from_file(cls, path: str | Path, landmarks: str | Path | None = None, **kwargs) -> FlameModel:
        """Load a FLAME ``.pkl``/``.npz`` safely and build the model."""
        return cls(load_model_file(path, landmarks), **kwargs)

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    def _batch(self, shape: Tensor | None, expression: Tensor | None, pose: Tensor | None,
               translation: Tensor | None, offsets: Tensor | None) -> int:
        sizes = {t.shape[0] for t in (shape, expression, pose, translation, offsets) if t is not None}
        if len(sizes) > 1:
            raise InvalidInput(f"FLAME parameters disagree on the batch size: {sorted(sizes)}")
        return sizes.pop() if sizes else 1

    def forward(self, shape: Tensor | None = None, expression: Tensor | None = None, pose: Tensor | None = None,
                translation: Tensor | None = None, offsets: Tensor | None = None,
                return_transforms: bool = False) -> FlameOutput:
        """Pose the model.

        Args:
            shape: (B, n_shape) identity coefficients (zeros when None).
            expression: (B, n_expr) expression coefficients.
            pose: (B, 5, 3) axis-angle for root, neck, jaw, eye_L, eye_R.
            translation: (B, 3) added to every vertex and joint.
            offsets: (B, V, 3) canonical per-vertex offsets (e.g. Gaussian offsets); they ride on the
                surface but do not move the joints.
            return_transforms: also return per-vertex skinning rotations and translations.
        """
        b = self._batch(shape, expression, pose, translation, offsets)
        dev, dt = self.v_template.device, self.v_template.dtype
        coeffs = torch.cat([
            self._coeffs(shape, self.n_shape, b, "shape"), self._coeffs(expression, self.n_expr, b, "expression"),
        ], dim=1)
        pose = torch.zeros(b, NUM_JOINTS, 3, device=dev, dtype=dt) if pose is None else pose
        if pose.shape[1:] != (NUM_JOINTS, 3):
            raise InvalidInput(f"pose must be (B, 5, 3) axis-angle, got {tuple(pose.shape)}")
        v_shaped = self.v_template + blend_shapes(coeffs, self.shapedirs)
        joints = vertices2joints(self.J_regressor, v_shaped)
        rot = batch_rodrigues(pose.reshape(-1, 3)).view(b, NUM_JOINTS, 3, 3)
        eye = torch.eye(3, device=dev, dtype=dt)
        pose_feature = (rot[:, 1:] - eye).reshape(b, -1)
        v_posed = v_shaped + (pose_feature @ self.posedirs).view(b, -1, 3)
        if offsets is not None:
            v_posed = v_posed + offsets
        joints_posed, rel = batch_rigid_transform(rot, joints, self.parents, dtype=dt)
        t = torch.einsum("vj,bjmn->bvmn", self.lbs_weights, rel)  # (B,V,4,4)
        verts = torch.einsum("bvmn,bvn->bvm", t[..., :3, :3], v_posed) + t[..., :3, 3]
        if translation is not None:
            verts = verts + translation[:, None]
            joints_posed = joints_posed + translation[:, None]
        out = FlameOutput(vertices=verts, joints=joints_posed, landmarks=self.landmarks(verts))
        if return_transforms:
            out.rest = v_posed
            out.rotations = t[..., :3, :3]
            out.translations = t[..., :3, 3] + (0 if translation is None else translation[:, None])
        return out

    def _coeffs(self, x: Tensor | None, n: int, b: int, what: str) -> Tensor:
        if x is None:
            return self.v_template.new_zeros(b, n)
        if x.ndim != 2 or x.shape[1] > n:
            raise InvalidInput(f"{what} must be (B, <= {n}), got {tuple(x.shape)}")
        return torch.nn.functional.pad(x, (0, n - x.shape[1]))

    def landmarks(self, vertices: Tensor) -> Tensor | None:
        """Landmarks (B,L,3) from vertices (B,V,3) via the barycentric embedding, or None."""
        if self.lmk_vertices.shape[0] == 0:
            return None
        return torch.einsum("blkc,lk->blc", vertices[:, self.lmk_vertices], self.lmk_bary)
