"""The few-to-many trainer: one class for every stage, single process or torchrun DDP.

Batches are addressed by step: global step t feeds sample keys ``t·G + rank·B + j`` (G = B·world),
so a run is deterministic, each rank sees its own slice of the same global batch a single process
would see, and resuming needs only the step (plus model, optimizer, scheduler and RNG states, all
saved as safetensors + JSON).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Sampler

from ..api import save_checkpoint
from ..checkpoint import load_tensors, save_tensors
from ..data.sampler import ConcatSource, FewToManyDataset
from ..data.sources import open_source
from ..errors import InvalidInput
from ..flame import load_head_model
from ..images import save_image, to_uint8
from ..model.config import ModelConfig
from ..pipeline import AvatarPipeline
from .config import TrainConfig
from .losses import compute_losses

log = logging.getLogger(__name__)


class StepBatches(Sampler[list[int]]):
    """Yields this rank's sample keys for steps ``start .. steps-1``."""

    def __init__(self, start: int, steps: int, batch: int, rank: int = 0, world: int = 1):
        self.start, self.steps, self.batch, self.rank, self.world = start, steps, batch, rank, world

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        g = self.batch * self.world
        for t in range(self.start, self.steps):
            base = t * g + self.rank * self.batch
            yield list(range(base, base + self.batch))


def _distributed() -> tuple[int, int, int]:
    """(rank, world, local_rank); initializes the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if world > 1:
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def open_training_source(specs: list[str]):
    """The identity source for a list of dataset specs (see docs/datasets.md)."""
    if not specs:
        raise InvalidInput("no training data: set data.train = [\"path/to/dataset\"]")
    sources = [open_source(s) for s in specs]
    streams = [s for s in sources if getattr(s, "is_stream", False)]
    if streams and len(sources) > 1:
        raise InvalidInput("shard streams cannot be mixed with other datasets in data.train",
                           hint="pack everything into shards with 'ffavatar data pack'")
    if len(sources) == 1:
        return sources[0]
    return ConcatSource(sources)


def _lr_lambda(cfg: TrainConfig):
    o = cfg.optim

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = (step - o.warmup_steps) / max(1, cfg.steps - o.warmup_steps)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


class Trainer:
    """Builds the pipeline, data and optimizer from a ``TrainConfig`` and runs the steps."""

    def __init__(self, cfg: TrainConfig, flame: str | None = None, device: str | None = None):
        self.cfg = cfg
        self.rank, self.world, local = _distributed()
        if device is None:
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.manual_seed(cfg.seed)
        self.out = Path(cfg.out_dir)
        model_cfg = ModelConfig.preset(cfg.model_preset).override(cfg.model)
        self.pipe = AvatarPipeline(model_cfg, load_head_model(flame), subdivision=cfg.subdivision).to(self.device)
        if cfg.init_from:
            tensors, _ = load_tensors(cfg.init_from, "checkpoint", self.pipe.head_model_id)
            self.pipe.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
            log.info("initialized from %s", cfg.init_from)
        self.model = (DDP(self.pipe, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                          broadcast_buffers=False, find_unused_parameters=True) if self.world > 1 else self.pipe)
        groups = self.pipe.net.parameter_groups()
        o = cfg.optim
        self.opt = torch.optim.AdamW(
            [{"params": ps, "lr": o.lr * (o.encoder_lr_scale if name == "encoder" else 1.0), "name": name}
             for name, ps in groups.items() if ps], lr=o.lr, weight_decay=o.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg))
        self.source = open_training_source(cfg.data.train)
        self.stream = bool(getattr(self.source, "is_stream", False))
        self.dataset = (self.source.dataset(cfg.sampler, seed=cfg.seed, repeat=True) if self.stream
                        else FewToManyDataset(self.source, cfg.sampler, seed=cfg.seed))
        self.step = 0
        self.background = torch.ones(3, device=self.device)
        self.anchors = self.pipe.animator.anchors().detach()
        self._writer = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ state
    def save(self) -> Path:
        """Model checkpoint + training state (rank 0)."""
        if not self.is_main:
            return self.out / "checkpoint.safetensors"
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt = save_checkpoint(self.out / "checkpoint.safetensors", self.pipe,
                               {"train": {"step": self.step, "stage": self.cfg.stage, "config": self.cfg.to_dict()},
                                "image_size": self.cfg.sampler.size})
        opt = self.opt.state_dict()
        tensors = {f"opt.{i}.{k}": v for i, st in opt["state"].items() for k, v in st.items() if torch.is_tensor(v)}
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {"kind": "train_state", "head_model_id": self.pipe.head_model_id, "step": self.step,
                "param_groups": opt["param_groups"], "scheduler": self.sched.state_dict(),
                "config": self.cfg.to_dict()}
        save_tensors(self.out / "train_state.safetensors", tensors, meta)
        return ckpt

    def resume(self) -> None:
        """Continue exactly where ``save`` left off."""
        ckpt, state = self.out / "checkpoint.safetensors", self.out / "train_state.safetensors"
        tensors, _ = load_tensors(ckpt, "checkpoint", self.pipe.head_model_id, self.device)
        self.pipe.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        st, meta = load_tensors(state, "train_state", self.pipe.head_model_id)
        opt_state: dict[int, dict[str, Any]] = {}
        for key, v in st.items():
            if key.startswith("opt."):
                _, i, name = key.split(".", 2)
                opt_state.setdefault(int(i), {})[name] = v if name == "step" else v.to(self.device)
        self.opt.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
        self.sched.load_state_dict(meta["scheduler"])
        torch.set_rng_state(st["rng.torch"])
        self.step = int(meta["step"])
        log.info("resumed from step %d", self.step)

    def _check_ranks_agree(self) -> None:
        """Under DDP, gather a parameter checksum from every rank into OUT/ranks.json (rank 0)."""
        if self.world == 1:
            return
        with torch.no_grad():
            local = float(sum(p.double().sum() + p.double().square().sum() for p in self.pipe.net.parameters()))
        sums: list[float] = [0.0] * self.world
        dist.all_gather_object(sums, local)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "ranks.json").write_text(json.dumps({"step": self.step, "param_checksums": sums}))
            if len(set(sums)) != 1:
                log.error("ranks disagree on parameters: %s", sums)

    # ------------------------------------------------------------------ steps
    def loader(self, steps: int) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's batches for steps ``self.step .. steps-1``. Map-style data is addressed by step
        (exact resume); a shard stream is read in order (resume restarts the stream's epoch)."""
        if self.stream:
            loader = DataLoader(self.dataset, batch_size=self.cfg.batch_size, num_workers=self.cfg.data.num_workers)
            return itertools.islice(iter(loader), max(0, steps - self.step))
        batches = StepBatches(self.step, steps, self.cfg.batch_size, self.rank, self.world)
        return DataLoader(self.dataset, batch_sampler=batches, num_workers=self.cfg.data.num_workers,
                          persistent_workers=False)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        amp = self.cfg.bf16 and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
            out = self.model(batch["source"], batch["target"], batch["source_mask"], self.background)
            loss, terms = compute_losses(out, batch, self.anchors, self.cfg.loss)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.pipe.net.parameters(), self.cfg.optim.grad_clip)
        self.opt.step()
        self.sched.step()
        self.step += 1
        terms["grad_norm"] = float(gn)
        terms["lr"] = self.sched.get_last_lr()[0]
        if self.is_main and self.cfg.grid_every and self.step % self.cfg.grid_every == 0:
            self.save_grid(batch, out.render.rgb.detach())
        return terms

    def save_grid(self, batch: dict[str, torch.Tensor], render: torch.Tensor, rows: int = 4) -> Path:
        """PNG grid: first source | target | render, one row per sample."""
        m = batch["target"].shape[1]
        lines = []
        for b in range(min(rows, batch["target"].shape[0])):
            src = batch["source"][b, 0].permute(1, 2, 0)
            tgt = batch["target"][b, 0].permute(1, 2, 0)
            lines.append(torch.cat([src, tgt, render[b * m].float().clamp(0, 1)], dim=1))
        grid = to_uint8(torch.cat(lines, dim=0).cpu().numpy())
        path = save_image(self.out / "grids" / f"step{self.step:07d}.png", grid)
        if self.writer is not None:
            self.writer.add_image("grid", grid, self.step, dataformats="HWC")
        return path

    @property
    def writer(self):
        if self._writer is None and self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._writer = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                self._writer = False
        return self._writer or None

    def log(self, terms: dict[str, float], seconds: float, samples: int) -> None:
        if not self.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        row = {"step": self.step, **terms, "samples_per_s": samples / max(seconds, 1e-9)}
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if k != "step":
                    self.writer.add_scalar(f"train/{k}", v, self.step)

    def fit(self, steps: int | None = None, progress: bool = True) -> list[dict[str, float]]:
        """Run until ``steps`` (default cfg.steps); returns the per-step loss terms of this call."""
        steps = self.cfg.steps if steps is None else steps
        self.pipe.train()
        history = []
        bar = None
        if progress and self.is_main:
            from tqdm import tqdm
            bar = tqdm(total=steps, initial=self.step, desc=f"train {self.cfg.stage}", unit="step")
        t0 = time.perf_counter()
        samples = 0
        for batch in self.loader(steps):
            terms = self.train_step(batch)
            history.append(terms)
            samples += batch["target"].shape[0] * self.world
            if self.step % self.cfg.log_every == 0 or self.step == steps:
                self.log(terms, time.perf_counter() - t0, samples)
                t0, samples = time.perf_counter(), 0
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{terms['total']:.4f}", l1=f"{terms['l1']:.4f}")
            if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                self.save()
        if bar is not None:
            bar.close()
        self._check_ranks_agree()
        self.save()
        if self.is_main and (self.out / "metrics.jsonl").is_file():
            from .curve import plot_curve
            plot_curve(self.out / "metrics.jsonl", self.out / "curve.png")
        if self.writer is not None:
            self.writer.flush()
        return history

