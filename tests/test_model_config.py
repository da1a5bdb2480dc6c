"""Model configs: presets, JSON round trip, strictness."""

from __future__ import annotations

import json

import pytest

from ffavatar.errors import InvalidInput
from ffavatar.model.config import EncoderConfig, ModelConfig, QueryFormerConfig


@pytest.mark.parametrize("name", ModelConfig.presets)
def test_preset_json_round_trip(name):
    cfg = ModelConfig.preset(name)
    text = json.dumps(cfg.to_dict())
    back = ModelConfig.from_dict(json.loads(text))
    assert back == cfg
    assert isinstance(back.encoder.fuse_layers, tuple)


def test_base_preset_is_vit_b14_and_the_default():
    cfg = ModelConfig.preset("base")
    assert cfg == ModelConfig()
    assert (cfg.encoder.embed_dim, cfg.encoder.num_blocks, cfg.encoder.num_heads) == (768, 12, 12)
    assert cfg.encoder.patch_size == 14 and cfg.encoder.image_size == 224
    assert 512 <= cfg.query_former.dim <= 768 and 6 <= cfg.query_former.depth <= 10
    assert cfg.query_former.self_attention == "full"
    large = ModelConfig.preset("large")
    assert (large.encoder.embed_dim, large.encoder.num_blocks, large.encoder.num_heads) == (1024, 24, 16)
    assert large.encoder.num_registers == 4
    small = ModelConfig.preset("small")
    assert (small.encoder.embed_dim, small.encoder.num_blocks, small.encoder.num_heads) == (384, 12, 6)


def test_tiny_is_shallow_and_small():
    cfg = ModelConfig.preset("tiny")
    assert cfg.encoder.embed_dim == 192 and cfg.encoder.num_blocks == 4
    assert cfg.encoder.image_size == 112 and cfg.encoder.pos_embed_size == 112
    assert max(cfg.encoder.fuse_layers) == cfg.encoder.num_blocks - 1


def test_unknown_keys_are_named():
    with pytest.raises(InvalidInput, match="colour"):
        ModelConfig.from_dict({"colour": 1})
    with pytest.raises(InvalidInput, match=r"depht"):
        ModelConfig.from_dict({"query_former": {"depht": 3}})


def test_wrong_types_and_ranges():
    with pytest.raises(InvalidInput, match="query_former.depth"):
        ModelConfig.from_dict({"query_former": {"depth": "3"}})
    with pytest.raises(InvalidInput, match="fuse_layers"):
        EncoderConfig.from_dict({"fuse_layers": [2, 12]})
    with pytest.raises(InvalidInput, match="multiple"):
        EncoderConfig(image_size=225)
    with pytest.raises(InvalidInput, match="num_registers"):
        EncoderConfig(num_registers=2)
    with pytest.raises(InvalidInput, match="heads"):
        QueryFormerConfig(dim=100, heads=8)
    with pytest.raises(InvalidInput, match="preset"):
        ModelConfig.preset("huge")
    with pytest.raises(InvalidInput, match="n_expr"):
        ModelConfig.from_dict({"n_expr": 50, "estimator": {"n_expr": 100}})


def test_override_is_partial_and_nested():
    tiny = ModelConfig.preset("tiny")
    cfg = tiny.override({"query_former": {"depth": 3}, "gaussian_head": {"max_offset": 1}})
    assert cfg.query_former.depth == 3
    assert cfg.query_former.dim == tiny.query_former.dim  # untouched keys keep the preset's values
    assert cfg.gaussian_head.max_offset == 1.0 and isinstance(cfg.gaussian_head.max_offset, float)
    assert cfg.encoder == tiny.encoder
    assert tiny.query_former.depth == 2  # the original is unchanged (frozen)
