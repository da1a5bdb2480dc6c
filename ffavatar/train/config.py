"""Training configuration: one dataclass per concern, loaded from TOML, overridable from the CLI.

A stage (``pretrain`` on monocular video, ``multiview`` on calibrated captures) is a TOML file under
``configs/``; ``--set section.key=value`` overrides any field.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ..data.sampler import SamplerConfig
from ..errors import InvalidInput
from .losses import LossWeights

STAGES = ("pretrain", "multiview")


@dataclass
class DataConfig:
    """``train``: dataset specs (folder with dataset.json, ``nersemble:PATH``, ``ava256:PATH``, a shard dir)."""

    train: list[str] = field(default_factory=list)
    num_workers: int = 0


@dataclass
class OptimConfig:
    lr: float = 3e-4
    encoder_lr_scale: float = 0.1
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    min_lr_ratio: float = 0.05


@dataclass
class TrainConfig:
    """Everything a training run needs. ``model`` is a preset name plus nested overrides."""

    stage: str = "pretrain"
    model_preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)
    subdivision: int = 1
    init_from: str | None = None
    steps: int = 1000
    batch_size: int = 2
    seed: int = 0
    bf16: bool = True
    out_dir: str = "runs/default"
    log_every: int = 10
    checkpoint_every: int = 500
    grid_every: int = 250
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise InvalidInput(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise InvalidInput("steps and batch_size must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InvalidInput(f"unknown config key(s) {', '.join(where + k for k in unknown)}",
                           hint=f"known keys: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name) if name not in ("model",) else None
        if is_dataclass(default) and isinstance(value, dict):
            kwargs[name] = _build(type(default), value, f"{where}{name}.")
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise InvalidInput(f"bad config in {where or 'top level'}: {e}") from e


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict."""
    keys = dotted.split(".")
    node = doc
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise InvalidInput(f"cannot set {dotted}: {k} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """TOML file (optional) + ``key.sub=value`` overrides (values parsed as TOML, else strings)."""
    doc: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InvalidInput(f"config file not found: {p}")
        try:
            doc = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise InvalidInput(f"{p} is not valid TOML: {e}") from e
    for item in overrides or []:
        if "=" not in item:
            raise InvalidInput(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        set_path(doc, key.strip(), _parse_value(value.strip()))
    return _build(TrainConfig, doc, "")
