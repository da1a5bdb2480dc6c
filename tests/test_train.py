"""Training: loss falls, exact resume, DDP (2 gloo processes via torchrun) equals one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ffavatar_testdata import TINY_TRAIN, make_folder_dataset
from ffavatar.errors import InvalidInput
from ffavatar.train.config import load_config
from ffavatar.train.trainer import StepBatches, Trainer


def _cfg(tmp_path, data, out, *extra):
    return load_config(None, [*TINY_TRAIN, f"data.train=['{data}']", f"out_dir='{out}'", *extra])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("data") / "ds")


def test_loss_falls_and_files_written(tmp_path, dataset, tiny_flame_file):
    cfg = _cfg(tmp_path, dataset, tmp_path / "run", "steps=24", "optim.lr=3e-3", "grid_every=12")
    history = Trainer(cfg, flame=tiny_flame_file).fit(progress=False)
    first = sum(h["l1"] for h in history[:4]) / 4
    last = sum(h["l1"] for h in history[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 25)) and rows[-1]["samples_per_s"] > 0
    assert (tmp_path / "run" / "grids" / "step0000012.png").is_file()
    assert (tmp_path / "run" / "curve.png").stat().st_size > 1000
    assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_resume_gives_the_same_next_step(tmp_path, dataset, tiny_flame_file):
    full = Trainer(_cfg(tmp_path, dataset, tmp_path / "a", "steps=4"), flame=tiny_flame_file).fit(progress=False)
    part = Trainer(_cfg(tmp_path, dataset, tmp_path / "b", "steps=4"), flame=tiny_flame_file)
    part.fit(steps=2, progress=False)
    resumed = Trainer(_cfg(tmp_path, dataset, tmp_path / "b", "steps=4"), flame=tiny_flame_file)
    resumed.resume()
    assert resumed.step == 2
    rest = resumed.fit(progress=False)
    assert rest[0]["total"] == pytest.approx(full[2]["total"], rel=1e-6, abs=1e-7)
    assert rest[1]["total"] == pytest.approx(full[3]["total"], rel=1e-6, abs=1e-7)


def test_step_batches_split_one_global_batch():
    single = list(StepBatches(3, 5, batch=4))
    ranks = [list(StepBatches(3, 5, batch=2, rank=r, world=2)) for r in range(2)]
    for t in range(2):
        assert single[t] == ranks[0][t] + ranks[1][t]


def test_config_errors(tmp_path):
    with pytest.raises(InvalidInput, match="unknown config key"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(InvalidInput, match="stage"):
        load_config(None, ["stage='finetune'"])
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = [")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_config(bad)


def test_ddp_two_processes_equal_single_process(tmp_path, dataset, tiny_flame_file):
    common = [*TINY_TRAIN, f"data.train=['{dataset}']", "steps=2", "optim.lr=1e-3"]
    sets = lambda extra: sum((["--set", s] for s in common + extra), [])  # noqa: E731
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "ffavatar.cli", "train", "--flame", tiny_flame_file, "--device", "cpu"]
    subprocess.run([*base, *sets(["batch_size=2"]), "--out", str(tmp_path / "single")], check=True, env=env,
                   timeout=300, capture_output=True)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "ffavatar.train", "--flame", tiny_flame_file, "--device", "cpu",
                          *sets(["batch_size=1"]), "--out", str(tmp_path / "ddp")],
                         env=env, timeout=300, capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    sums = json.loads((tmp_path / "ddp" / "ranks.json").read_text())["param_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # both ranks hold bit-identical parameters
    a = load_file(str(tmp_path / "single" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "checkpoint.safetensors"))
    assert a.keys() == b.keys()
    moved = 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4)
    init = Trainer(load_config(None, [*common, "batch_size=2", f"out_dir='{tmp_path / 'x'}'"]), flame=tiny_flame_file)
    for k, v in init.pipe.net.state_dict().items():
        moved += int(not torch.equal(v, a[f"net.{k}"]))
    assert moved > 10  # training really changed the weights the ranks agree on


def test_ground_truth_supervision_is_zero_at_the_truth(tmp_path):
    """The optional synthetic supervision compares the estimator's (ψ, θ, camera) with the dataset's
    in the estimator's own camera parametrization: the ground truth itself scores 0."""
    from scipy.spatial.transform import Rotation

    from ffavatar.data.sampler import SamplerConfig, sample_few_to_many
    from ffavatar.data.synthetic import SynthConfig, generate
    from ffavatar.data.folder import FolderDataset
    from ffavatar.model.flame_estimator import EstimatedFlame
    from ffavatar.train.losses import LossWeights, compute_losses
    import numpy as np

    root = generate(SynthConfig(identities=1, frames=2, views=2, size=32, seed=5), tmp_path / "s")
    ds = FolderDataset(root)
    rec = ds.identity(ds.identities[0])
    batch = sample_few_to_many(rec, lambda v: ds.load_view(rec.id, v), np.random.default_rng(0),
                               SamplerConfig(max_sources=1, targets=2, size=32))
    batch = {k: v[None] for k, v in batch.items()}
    vm = batch["target_viewmat"][0]
    flip = np.diag([1.0, -1.0, -1.0])
    cam_rot = torch.tensor(Rotation.from_matrix(flip @ vm[:, :3, :3].double().numpy()).as_rotvec(), dtype=torch.float32)
    truth = EstimatedFlame(expr=batch["target_expression"][0], pose=batch["target_pose"][0], cam_rot=cam_rot,
                           cam_t=vm[:, :3, 3], focal=batch["target_focal"][0])

    class Out:  # the fields compute_losses reads
        targets = truth
        render = type("R", (), {"rgb": batch["target"][0].permute(0, 2, 3, 1), "alpha": batch["target_alpha"][0][..., None]})
        canonical = type("G", (), {"means": torch.zeros(1, 3), "log_scales": torch.full((1, 3), -6.0)})

    _, terms = compute_losses(Out, batch, torch.zeros(1, 3), LossWeights(flame_supervision=1.0))
    assert terms["flame_supervision"] < 1e-10 and terms["l1"] == 0.0
    truth.cam_t = truth.cam_t + 0.1
    _, terms = compute_losses(Out, batch, torch.zeros(1, 3), LossWeights(flame_supervision=1.0))
    assert abs(terms["flame_supervision"] - 0.01) < 1e-6
