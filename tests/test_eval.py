"""Evaluation: metrics against hand values, LPIPS from a local file, and the report files."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from ffavatar_testdata import make_folder_dataset
from ffavatar.api import Reconstructor, save_checkpoint
from ffavatar.cli import main
from ffavatar.errors import CheckpointError
from ffavatar.eval.metrics import LPIPS, psnr, ssim


def test_psnr_ssim_known_values():
    a = torch.zeros(2, 3, 16, 16)
    b = a.clone()
    b[1] += 0.1
    p = psnr(b, a)
    assert p[1].item() == pytest.approx(20.0, abs=1e-4) and p[0].item() > 90
    s = ssim(a + 0.5, a + 0.5)
    assert torch.allclose(s, torch.ones(2), atol=1e-5)
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert ssim(noise, torch.full((1, 3, 64, 64), 0.5)).item() < 0.2


def test_lpips_from_local_weights(tmp_path):
    torch.manual_seed(0)
    ref = LPIPS()
    state = {k: v for k, v in ref.features.state_dict().items()}
    state = {f"features.{k}": v.abs() * 0.1 for k, v in state.items()}
    state.update({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))})
    path = tmp_path / "lpips_vgg.safetensors"
    save_file(state, str(path))
    m = LPIPS.from_file(path)
    x = torch.rand(2, 3, 64, 64)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert torch.allclose(m(x, x), torch.zeros(2), atol=1e-6)
    d = m(x, y)
    assert (d > 0).all() and torch.allclose(d, m(y, x), rtol=1e-4)
    assert (m(x, (x + 0.4 * torch.randn_like(x)).clamp(0, 1)) > d).all()  # more noise, larger distance
    save_file({"features.0.weight": torch.zeros(64, 3, 3, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="lack"):
        LPIPS.from_file(tmp_path / "bad.safetensors")


def test_eval_writes_report_with_printed_numbers(tmp_path, tiny_flame_file, capsys):
    data = make_folder_dataset(tmp_path / "ds", identities=2, frames=2, views=2, size=32)
    rec = Reconstructor.from_checkpoint(None, device="cpu", flame=tiny_flame_file)
    ck = save_checkpoint(tmp_path / "ck.safetensors", rec.pipeline, {"image_size": 32})
    code = main(["eval", "--checkpoint", str(ck), "--flame", tiny_flame_file, "--device", "cpu", "--data", str(data),
                 "-o", str(tmp_path / "rep"), "--views", "1,2", "--personalize-steps", "0,2", "--max-targets", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    names = list(report["summary"])
    assert names == ["1 view", "1 view + 2-step personalization", "2 views", "2 views + 2-step personalization",
                     "no-prior optimization, 2 views, 2 steps"]
    for name, s in report["summary"].items():
        assert f"PSNR {s['psnr']:6.2f}" in printed and math.isfinite(s["psnr"]) and 0 < s["ssim"] <= 1
        assert s["identities"] == 2
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"| 2 views | {report['summary']['2 views']['psnr']:.2f} |" in md
    assert report["lpips"].startswith("skipped") and (tmp_path / "rep" / "grid.png").stat().st_size > 0
