"""The method learns: a tiny model trained on one synthetic identity (demo head) reproduces its own
views. Budget: 60 CPU steps at 48 px; stated goal: PSNR on its own views >= 18 dB and >= 4 dB above
the untrained model."""

from __future__ import annotations

import numpy as np
import torch

from ffavatar.api import Reconstructor
from ffavatar.data.folder import FolderDataset
from ffavatar.data.synthetic import SynthConfig, generate
from ffavatar.eval.metrics import psnr
from ffavatar.train.config import load_config
from ffavatar.train.trainer import Trainer

STEPS = 60
OVERRIDES = ["batch_size=2", "sampler.size=48", "sampler.max_sources=2", "sampler.targets=2", "subdivision=0",
             "model.n_shape=20", "model.n_expr=20", "model.encoder.image_size=56", "model.encoder.pos_embed_size=56",
             "grid_every=0", "log_every=10", "checkpoint_every=0", "optim.warmup_steps=5", "optim.lr=3e-3",
             "optim.encoder_lr_scale=1.0", f"steps={STEPS}"]


def _own_view_psnr(rec: Reconstructor, data: FolderDataset) -> float:
    ident = data.identities[0]
    rec_ = data.identity(ident)
    views = [v for f in rec_.frames for v in f.views]
    images = [(data.load_view(ident, v)[0] * 255).round().astype(np.uint8) for v in views]
    avatar = rec.reconstruct(images[:2], crop="none")
    preds = [f.image for f in avatar.animate(images, size=48, crop="none")]
    p = torch.from_numpy(np.stack(preds)).permute(0, 3, 1, 2).float() / 255
    g = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return float(psnr(p, g).mean())


def test_tiny_model_fits_one_identity(tmp_path):
    torch.manual_seed(0)
    data = generate(SynthConfig(identities=1, frames=2, views=2, size=48, seed=11, yaw=30, pitch=10), tmp_path / "one")
    cfg = load_config(None, [*OVERRIDES, f"data.train=['{data}']", f"out_dir='{tmp_path / 'run'}'"])
    trainer = Trainer(cfg)
    untrained = Reconstructor(trainer.pipe, {"image_size": 48})
    before = _own_view_psnr(untrained, FolderDataset(data))
    trainer.fit(progress=False)
    trained = Reconstructor.from_checkpoint(tmp_path / "run" / "checkpoint.safetensors", device="cpu")
    after = _own_view_psnr(trained, FolderDataset(data))
    print(f"own-view PSNR: untrained {before:.2f} dB -> {after:.2f} dB after {STEPS} steps")
    assert after >= 18.0 and after >= before + 4.0, (before, after)
