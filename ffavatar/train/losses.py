"""Training losses: photometric (L1 + SSIM), alpha/mask, regularizers and optional FLAME supervision."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from torch import Tensor

from ..model.flame_estimator import EstimatedFlame, axis_angle_to_matrix
from ..pipeline import PipelineOutput


@dataclass
class LossWeights:
    """Weights of each term (0 disables it). ``flame_supervision`` uses ground-truth FLAME parameters
    when the data has them (synthetic); the paper trains the estimator from pixels alone (off)."""

    l1: float = 1.0
    ssim: float = 0.2
    alpha: float = 0.1
    offset: float = 1.0
    scale: float = 0.1
    expression_prior: float = 1e-3
    pose_prior: float = 1e-3
    camera_prior: float = 1e-2
    flame_supervision: float = 0.0


def photometric(render: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """L1 and (1 - SSIM) between renders (B,H,W,3) and targets (B,3,H,W), both in [0,1]."""
    pred = render.permute(0, 3, 1, 2)
    l1 = (pred - target).abs().mean()
    win = 11 if min(target.shape[-2:]) > 11 * 4 else 3
    s = ssim(pred.float().clamp(0, 1), target.float(), data_range=1.0, size_average=True, win_size=win)
    return l1, 1.0 - s


def flame_priors(est: EstimatedFlame) -> dict[str, Tensor]:
    """Keep estimated FLAME parameters and the camera rotation near their priors (head pose carries
    the rotation; the camera mostly translates and zooms)."""
    return {"expression_prior": est.expr.square().mean(), "pose_prior": est.pose[:, 1:].square().mean(),
            "camera_prior": est.cam_rot.square().mean()}


def compute_losses(out: PipelineOutput, batch: dict[str, Tensor], anchors: Tensor, w: LossWeights,
                   max_scale: float = 0.02) -> tuple[Tensor, dict[str, float]]:
    """Total loss and its terms for one few-to-many batch (targets flattened to B*M)."""
    target = batch["target"].flatten(0, 1)
    l1, dssim = photometric(out.render.rgb, target)
    terms: dict[str, Tensor] = {"l1": l1, "ssim": dssim}
    if w.alpha:
        has = batch["target_has_alpha"].flatten()
        if bool(has.any()):
            alpha = out.render.alpha[..., 0][has]
            terms["alpha"] = (alpha - batch["target_alpha"].flatten(0, 1)[has]).abs().mean()
    g = out.canonical
    if w.offset:
        n = min(anchors.shape[0], g.means.shape[-2])
        terms["offset"] = (g.means[..., :n, :] - anchors[:n]).square().sum(-1).mean()
    if w.scale:
        terms["scale"] = F.relu(g.log_scales.exp() - max_scale).mean()
    terms.update(flame_priors(out.targets))
    if w.flame_supervision and "target_expression" in batch:
        e = out.targets
        gt_e = batch["target_expression"].flatten(0, 1)
        gt_p = batch["target_pose"].flatten(0, 1)
        k = min(gt_e.shape[1], e.expr.shape[1])
        sup = F.mse_loss(e.expr[:, :k], gt_e[:, :k]) + F.mse_loss(e.pose, gt_p)
        if "target_viewmat" in batch:  # the camera too: same parametrization as camera_matrices
            vm = batch["target_viewmat"].flatten(0, 1)
            flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], device=vm.device, dtype=vm.dtype))
            sup = sup + F.mse_loss(flip @ axis_angle_to_matrix(e.cam_rot), vm[:, :3, :3])
            sup = sup + F.mse_loss(e.cam_t, vm[:, :3, 3]) + F.mse_loss(e.focal, batch["target_focal"].flatten())
        terms["flame_supervision"] = sup
    total = sum(getattr(w, k) * v for k, v in terms.items())
    return total, {k: float(v.detach()) for k, v in terms.items()} | {"total": float(total.detach())}
