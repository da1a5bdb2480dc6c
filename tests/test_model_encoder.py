"""DINOv2-layout ViT encoder: key layout, strict safetensors loading (DINOv2 + HF), pos-embed resampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ffavatar.errors import CheckpointError, InvalidInput
from ffavatar.model.config import EncoderConfig
from ffavatar.model.encoder import ImageEncoder


def _small(depth=2, registers=0, pos=518) -> EncoderConfig:
    return EncoderConfig(size="small", depth=depth, num_registers=registers, fuse_layers=(depth - 1,),
                         out_dim=32, pos_embed_size=pos, image_size=224)


def _expected_dinov2_keys(depth: int, registers: bool) -> set[str]:
    keys = {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias",
            "norm.weight", "norm.bias"}
    if registers:
        keys.add("register_tokens")
    for i in range(depth):
        for sub in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{sub}.weight", f"blocks.{i}.{sub}.bias"}
        keys |= {f"blocks.{i}.ls1.gamma", f"blocks.{i}.ls2.gamma"}
    return keys


def _to_hf(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Rename a DINOv2 state dict the way HF's Dinov2Model names it (written independently here)."""
    d = state["cls_token"].shape[-1]
    hf = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": state["mask_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    if "register_tokens" in state:
        hf["embeddings.register_tokens"] = state["register_tokens"]
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for p in ("weight", "bias"):
            qkv = state[src + f"attn.qkv.{p}"]
            for j, name in enumerate(("query", "key", "value")):
                hf[dst + f"attention.attention.{name}.{p}"] = qkv[j * d : (j + 1) * d].clone()
            hf[dst + f"attention.output.dense.{p}"] = state[src + f"attn.proj.{p}"]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                hf[dst + f"{n}.{p}"] = state[src + f"{n}.{p}"]
        hf[dst + "layer_scale1.lambda1"] = state[src + "ls1.gamma"]
        hf[dst + "layer_scale2.lambda1"] = state[src + "ls2.gamma"]
    return {k: v.contiguous() for k, v in hf.items()}


def _reference_forward(hf: dict[str, torch.Tensor], x: torch.Tensor, depth: int, heads: int) -> torch.Tensor:
    """Plain-math ViT forward over HF-named weights (separate q/k/v, explicit softmax); no resampling."""
    d = hf["embeddings.cls_token"].shape[-1]
    t = F.conv2d(x, hf["embeddings.patch_embeddings.projection.weight"],
                 hf["embeddings.patch_embeddings.projection.bias"], stride=14).flatten(2).transpose(1, 2)
    b = x.shape[0]
    t = torch.cat([hf["embeddings.cls_token"].expand(b, 1, d), t], 1) + hf["embeddings.position_embeddings"]
    if "embeddings.register_tokens" in hf:
        reg = hf["embeddings.register_tokens"].expand(b, -1, -1)
        t = torch.cat([t[:, :1], reg, t[:, 1:]], 1)
    for i in range(depth):
        w = lambda n: hf[f"encoder.layer.{i}.{n}"]  # noqa: E731
        h = F.layer_norm(t, (d,), w("norm1.weight"), w("norm1.bias"), eps=1e-6)
        q, k, v = (
            (h @ w(f"attention.attention.{n}.weight").T + w(f"attention.attention.{n}.bias"))
            .view(b, -1, heads, d // heads).transpose(1, 2)
            for n in ("query", "key", "value")
        )
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1) @ v
        a = a.transpose(1, 2).reshape(b, -1, d) @ w("attention.output.dense.weight").T
        t = t + w("layer_scale1.lambda1") * (a + w("attention.output.dense.bias"))
        h = F.layer_norm(t, (d,), w("norm2.weight"), w("norm2.bias"), eps=1e-6)
        m = F.gelu(h @ w("mlp.fc1.weight").T + w("mlp.fc1.bias")) @ w("mlp.fc2.weight").T + w("mlp.fc2.bias")
        t = t + w("layer_scale2.lambda1") * m
    return F.layer_norm(t, (d,), hf["layernorm.weight"], hf["layernorm.bias"], eps=1e-6)


@pytest.mark.parametrize("registers", [0, 4])
def test_parameter_names_and_shapes_are_dinov2s(registers):
    enc = ImageEncoder(_small(depth=2, registers=registers))
    sd = enc.backbone.state_dict()
    assert set(sd) == _expected_dinov2_keys(2, bool(registers))
    assert sd["cls_token"].shape == (1, 1, 384)
    assert sd["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    assert sd["mask_token"].shape == (1, 384)
    assert sd["patch_embed.proj.weight"].shape == (384, 3, 14, 14)
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * 384, 384)
    assert sd["blocks.1.ls2.gamma"].shape == (384,)
    assert sd["blocks.0.mlp.fc1.weight"].shape == (4 * 384, 384)
    if registers:
        assert sd["register_tokens"].shape == (1, 4, 384)


def test_dinov2_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    src = ImageEncoder(_small(registers=4))
    path = tmp_path / "dinov2.safetensors"
    save_file({k: v.contiguous() for k, v in src.backbone.state_dict().items()}, str(path))
    torch.manual_seed(1)
    dst = ImageEncoder(_small(registers=4))
    dst.fuse.load_state_dict(src.fuse.state_dict())
    x = torch.rand(2, 3, 56, 42)
    assert not torch.allclose(dst(x)[0], src(x)[0])
    dst.load_pretrained(path)
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(dst.backbone.state_dict()[k], v), k
    for a, b in zip(dst(x), src(x)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("registers", [0, 4])
def test_hf_layout_maps_onto_dinov2_and_matches_reference_math(tmp_path, registers):
    torch.manual_seed(0)
    cfg = _small(depth=2, registers=registers, pos=56)
    src = ImageEncoder(cfg)
    with torch.no_grad():  # non-trivial layer scales and biases so a wrong mapping shows
        for name, p in src.backbone.named_parameters():
            if name.endswith(("gamma", "bias")):
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("gamma") else 0.0))
    hf = _to_hf(src.backbone.state_dict(), depth=2)
    path = tmp_path / "model.safetensors"
    save_file(hf, str(path))
    torch.manual_seed(5)
    dst = ImageEncoder(cfg)
    dst.load_pretrained(path)
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(dst.backbone.state_dict()[k], v), k
    x = torch.randn(2, 3, 56, 56)  # the stored 4x4 grid: no pos-embed resampling involved
    ours = dst.backbone.intermediate(x, (1,))[0]
    ref = _reference_forward(hf, x, depth=2, heads=6)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_missing_extra_and_misshaped_keys_are_named(tmp_path):
    enc = ImageEncoder(_small())
    good = {k: v.contiguous() for k, v in enc.backbone.state_dict().items()}

    missing = dict(good)
    del missing["blocks.1.ls1.gamma"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys \['blocks\.1\.ls1\.gamma'\]"):
        enc.load_pretrained(tmp_path / "missing.safetensors")

    extra = dict(good, **{"head.weight": torch.zeros(3)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected keys \['head\.weight'\]"):
        enc.load_pretrained(tmp_path / "extra.safetensors")

    deeper = ImageEncoder(_small(depth=3))  # a 3-block checkpoint into a 2-block encoder
    save_file({k: v.contiguous() for k, v in deeper.backbone.state_dict().items()},
              str(tmp_path / "deeper.safetensors"))
    with pytest.raises(CheckpointError, match=r"blocks\.2\.attn\.qkv\.weight"):
        enc.load_pretrained(tmp_path / "deeper.safetensors")

    other_grid = ImageEncoder(_small(pos=224))
    save_file({k: v.contiguous() for k, v in other_grid.backbone.state_dict().items()},
              str(tmp_path / "grid.safetensors"))
    with pytest.raises(CheckpointError, match=r"pos_embed.*pos_embed_size=224"):
        enc.load_pretrained(tmp_path / "grid.safetensors")

    hf = _to_hf(good, depth=2)
    del hf["encoder.layer.0.attention.attention.key.bias"]
    save_file(hf, str(tmp_path / "hf.safetensors"))
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.0\.attention\.attention\.key\.bias"):
        enc.load_pretrained(tmp_path / "hf.safetensors")


def test_refuses_pickles_and_missing_files(tmp_path):
    enc = ImageEncoder(_small())
    pth = tmp_path / "dinov2_vits14.pth"
    torch.save({"cls_token": torch.zeros(1)}, pth)
    with pytest.raises(CheckpointError, match="pickle"):
        enc.load_pretrained(pth)
    with pytest.raises(CheckpointError, match="does not exist"):
        enc.load_pretrained(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="safetensors"):
        enc.load_pretrained(junk)


@pytest.mark.parametrize("registers", [0, 4])
def test_pos_embed_resampling_grid_and_orientation(registers):
    enc = ImageEncoder(_small(registers=registers))
    vit = enc.backbone
    g = vit.pos_grid
    assert g == 37
    rows = torch.arange(g, dtype=torch.float32)[:, None].expand(g, g)
    cols = torch.arange(g, dtype=torch.float32)[None, :].expand(g, g)
    with torch.no_grad():
        vit.pos_embed.zero_()
        vit.pos_embed[0, 0, :] = 7.0
        vit.pos_embed[0, 1:, 0] = rows.reshape(-1)  # channel 0: row index, channel 1: column index
        vit.pos_embed[0, 1:, 1] = cols.reshape(-1)
        vit.pos_embed[0, 1:, 2] = 3.0  # constant
    assert vit.interpolate_pos_embed(37, 37) is vit.pos_embed
    for h, w in [(224, 224), (112, 112), (224, 112)]:
        gh, gw = h // 14, w // 14
        pe = vit.interpolate_pos_embed(gh, gw)
        assert pe.shape == (1, 1 + gh * gw, 384)
        assert torch.all(pe[0, 0] == vit.pos_embed[0, 0])
        grid = pe[0, 1:].reshape(gh, gw, 384)
        torch.testing.assert_close(grid[..., 2], torch.full((gh, gw), 3.0), atol=1e-4, rtol=0)
        # the row channel increases down the rows and is constant along a row; columns likewise
        assert torch.all(grid[1:, :, 0] > grid[:-1, :, 0])
        assert torch.allclose(grid[:, :, 0], grid[:, :1, 0].expand(gh, gw), atol=1e-4)
        assert torch.all(grid[:, 1:, 1] > grid[:, :-1, 1])
        # patch centres map to the old grid's coordinates: centre value ~ 18 for a 37-grid
        mid_r = grid[:, 0, 0].mean()
        assert abs(mid_r.item() - 18.0) < 0.5
        tokens, cls = enc(torch.rand(1, 3, h, w))
        assert tokens.shape == (1, gh * gw, 32) and cls.shape == (1, 32)


def test_forward_shapes_and_input_checks():
    cfg = EncoderConfig(size="tiny", depth=3, fuse_layers=(0, 2), out_dim=48, image_size=112, pos_embed_size=112)
    enc = ImageEncoder(cfg)
    tokens, cls = enc(torch.rand(3, 3, 112, 84))
    assert tokens.shape == (3, 8 * 6, 48) and cls.shape == (3, 48)
    assert enc.fuse.in_features == 2 * 192
    with pytest.raises(InvalidInput, match="multiple of the patch size"):
        enc(torch.rand(1, 3, 100, 112))
    with pytest.raises(InvalidInput, match=r"\(B, 3, H, W\)"):
        enc(torch.rand(3, 112, 112))
