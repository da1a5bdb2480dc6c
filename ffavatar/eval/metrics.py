"""Image metrics on (B,3,H,W) tensors in [0,1]: PSNR, SSIM (pytorch-msssim), LPIPS (local weights)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim as _ssim
from safetensors.torch import load_file
from torch import Tensor, nn

from ..errors import CheckpointError


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB (B,)."""
    mse = (pred.float() - target.float()).square().flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image SSIM (B,) with an 11-pixel Gaussian window (3 for tiny images)."""
    win = 11 if min(pred.shape[-2:]) > 44 else 3
    return _ssim(pred.float().clamp(0, 1), target.float(), data_range=1.0, size_average=False, win_size=win)


# VGG16 "features" convolution indices (torchvision layout) and the LPIPS taps after relu1_2 .. relu5_3
_VGG_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
              (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]
_TAPS = (3, 8, 15, 22, 29)
_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """LPIPS (VGG variant): weights from ONE local safetensors file holding torchvision's VGG16
    ``features.N.{weight,bias}`` and the LPIPS linear heads ``lin{k}.model.1.weight`` (k = 0..4).
    Nothing is downloaded; convert the official weights once with your own tools."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        convs = {i: (cin, cout) for i, cin, cout in _VGG_CONVS}
        for i in range(30):
            if i in convs:
                layers.append(nn.Conv2d(*convs[i], 3, padding=1))
            elif i in (4, 9, 16, 23):
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    @classmethod
    def from_file(cls, path: str | Path) -> LPIPS:
        m = cls()
        try:
            state = load_file(str(path))
        except Exception as e:  # safetensors raises several types for bad files
            raise CheckpointError(f"cannot read LPIPS weights {path}: {e}") from e
        mapped = {}
        for k, v in state.items():
            if k.startswith("features."):
                mapped[k] = v
            elif k.startswith("lin") and k.endswith(".model.1.weight"):
                mapped[f"lins.{int(k[3])}.weight"] = v
        missing, unexpected = m.load_state_dict(mapped, strict=False)
        missing = [k for k in missing if k not in ("shift", "scale")]
        if missing:
            raise CheckpointError(f"LPIPS weights {Path(path).name} lack {missing[:6]}",
                                  hint="expected torchvision VGG16 features.* and LPIPS lin*.model.1.weight keys")
        return m.eval()

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-image LPIPS distance (B,) for images in [0,1]."""
        x = ((pred * 2 - 1) - self.shift) / self.scale
        y = ((target * 2 - 1) - self.shift) / self.scale
        total = pred.new_zeros(pred.shape[0])
        for i, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if i in _TAPS:
                k = _TAPS.index(i)
                nx = x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10)
                ny = y / (y.square().sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + self.lins[k]((nx - ny).square()).mean((1, 2, 3))
                if k == len(_TAPS) - 1:
                    break
        return total


def resize_like(img: Tensor, size: tuple[int, int]) -> Tensor:
    return img if img.shape[-2:] == size else F.interpolate(img, size=size, mode="area")
