"""The training loop's parts, determinism, checkpoints and resume (in-process runner)."""

from __future__ import annotations

import json
import platform
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from genpipe.config import load_config
from genpipe.data import prepare_dataset
from genpipe.errors import InputError
from genpipe.training import train_family
from genpipe.artifacts import load_checkpoint, save_checkpoint
from genpipe.training.ema import ema_decay_at, make_ema
from genpipe.training.loop import _phase_step, batch_indices, lr_factor, resolve_precision
from tests.conftest import train_killed_after_first_checkpoint


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.1) == pytest.approx(0.55)  # cosine midpoint
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    values = [lr_factor(s, 100, 10, 0.1) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_auto_precision_is_bf16_only_where_the_device_computes_it_natively(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("fp32", cuda) == "fp32" and resolve_precision("bf16", cpu) == "bf16"  # explicit wins
    gpu = {"native": True}  # torch's check: compute capability >= 8, emulation not counted
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: gpu["native"] and not including_emulation)
    assert resolve_precision("auto", cuda) == "bf16"
    gpu["native"] = False  # e.g. a V100 or T4: bf16 only emulated
    assert resolve_precision("auto", cuda) == "fp32"
    caps = {"avx512_bf16": False, "amx_bf16": False, "avx2": True}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert resolve_precision("auto", cpu) == "fp32"  # torch would emulate bf16: slower than fp32
    caps["avx512_bf16"] = True
    assert resolve_precision("auto", cpu) == "bf16"
    caps["avx512_bf16"], caps["amx_bf16"] = False, True
    assert resolve_precision("auto", cpu) == "bf16"


def test_a_family_sets_its_own_precision_and_the_step_runs_under_it():
    cfg = load_config("params.yaml", ["train.precision=bf16", "flow.precision=fp32"])
    assert cfg.train_for("vae").precision == "bf16" and cfg.train_for("flow").precision == "fp32"

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 1)

        def forward(self, x, y, phase):
            out = self.lin(x.flatten(1))
            seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
            return {"loss": out.float().pow(2).mean()}

    probe, x = Probe(), torch.randn(3, 1, 2, 2)
    opt = torch.optim.SGD(probe.parameters(), lr=0.1)
    tc = cfg.train_for("vae")
    for precision in ("bf16", "fp32"):
        losses = _phase_step(probe, opt, list(probe.parameters()), x, None, "model", tc, torch.device("cpu"), precision)
        assert torch.isfinite(losses["loss"])
    assert seen == [(True, torch.bfloat16), (False, torch.float32)]
    assert probe.lin.weight.dtype == torch.float32  # the weights stay fp32 under autocast


def test_batches_shard_an_epoch_across_ranks_without_overlap():
    n, bs, world = 103, 8, 3
    per_epoch = (n // world) // bs  # 4 batches per rank per epoch
    seen = [torch.cat([batch_indices(n, bs, 0, s, r, world) for s in range(per_epoch)]) for r in range(world)]
    flat = torch.cat(seen)
    assert len(flat) == len(set(flat.tolist())) == world * per_epoch * bs
    assert torch.equal(batch_indices(n, bs, 0, 5, 1, world), batch_indices(n, bs, 0, 5, 1, world))
    assert not torch.equal(batch_indices(n, bs, 0, 0, 0, world), batch_indices(n, bs, 0, per_epoch, 0, world))
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(10, 8, 0, 0, 0, 2)


def test_ema_warms_up_and_tracks_the_weights():
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 10**6) == 0.999
    model = torch.nn.Linear(2, 1)
    ema = make_ema(model, 0.9)
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update_parameters(model)
    d = ema_decay_at(0.9, 1)
    expected = model.weight - 1.0 + (1 - d) * 1.0
    assert torch.allclose(ema.module.weight, expected)


def test_checkpoint_round_trip_and_bad_files(tmp_path):
    state = {"format": 1, "family": "vae", "step": 3, "total_steps": 3, "model": {"w": torch.arange(4.0)}, "ema": {},
             "rng": [{"torch": torch.get_rng_state()}], "config": {"a": [1, 2]}, "meta": {}}
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["step"] == 3 and torch.equal(back["model"]["w"], state["model"]["w"]) and back["config"] == {"a": [1, 2]}
    for key in ("config", "meta", "family"):  # loads under weights_only, but is not a checkpoint to use
        save_checkpoint(tmp_path / "part.pt", {k: v for k, v in state.items() if k != key})
        with pytest.raises(InputError, match=rf"part.pt: not a complete genpipe checkpoint \('{key}' missing"):
            load_checkpoint(tmp_path / "part.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pt: not a readable genpipe checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(InputError, match="no checkpoint here"):
        load_checkpoint(tmp_path / "missing.pt")


def _weights(path):
    return load_checkpoint(path)["model"]


def test_same_seed_same_final_loss_and_weights(project):
    cfg = load_config("params.yaml")
    prepare_dataset(cfg)
    a = train_family(cfg, "vae")
    wa = _weights(a.checkpoint)
    b = train_family(cfg, "vae")
    assert a.run_id != b.run_id
    assert a.losses == b.losses  # exactly: same seed, same CPU, same threads
    assert all(torch.equal(wa[k], v) for k, v in _weights(b.checkpoint).items())
    c = train_family(load_config("params.yaml", ["seed=1"]), "vae")
    assert c.losses["loss"] != a.losses["loss"]


def test_checkpoint_files_config_and_mlflow_run(project, mlflow_uri):
    cfg = load_config("params.yaml")
    prepare_dataset(cfg)
    out = train_family(cfg, "vae")
    family_dir = project / "models/vae"
    assert sorted(p.name for p in family_dir.iterdir()) == ["checkpoint.pt", "config.json"]
    state = load_checkpoint(out.checkpoint)
    assert state["step"] == 40 and state["family"] == "vae" and state["meta"]["mlflow_run_id"] == out.run_id
    assert json.loads((family_dir / "config.json").read_text()) == cfg.to_dict() == state["config"]
    run = MlflowClient(mlflow_uri).get_run(out.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "vae-digits"
    assert run.data.params["vae.latent_dim"] == "4" and run.data.params["train.steps"] == "40"
    assert run.data.tags["genpipe.dataset_sha256"] == state["meta"]["dataset_sha256"]
    assert "genpipe.git_commit" in run.data.tags
    history = MlflowClient(mlflow_uri).get_metric_history(out.run_id, "loss")
    assert [m.step for m in history] == list(range(5, 41, 5))
    artifacts = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(out.run_id, "checkpoint")}
    assert artifacts == {"checkpoint/checkpoint.pt", "checkpoint/config.json"}
    images = [a.path for a in MlflowClient(mlflow_uri).list_artifacts(out.run_id, "images")]
    assert len(images) >= 2  # sample grids at steps 20 and 40


def test_resume_continues_the_same_run_steps_and_random_stream(project, monkeypatch, mlflow_uri):
    cfg = load_config("params.yaml")
    prepare_dataset(cfg)
    whole = train_family(cfg, "vae")
    expected = _weights(whole.checkpoint)

    train_killed_after_first_checkpoint(monkeypatch, cfg, "vae")  # at step 20
    last = project / "models/vae/last.pt"
    assert load_checkpoint(last)["step"] == 20
    run_id = load_checkpoint(last)["meta"]["mlflow_run_id"]
    client = MlflowClient(mlflow_uri)
    assert client.get_run(run_id).info.status == "FAILED"

    with pytest.raises(InputError, match=r"another config \(train.steps: 40 then, 60 now\)"):
        train_family(load_config("params.yaml", ["train.steps=60"]), "vae", resume=True)
    resumed = train_family(cfg, "vae", resume=True)
    assert resumed.run_id == run_id and resumed.step == 40
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(5, 41, 5))
    got = _weights(resumed.checkpoint)
    assert all(torch.equal(expected[k], v) for k, v in got.items())  # bit-identical to the uninterrupted run
    assert not last.exists()


def test_resume_after_a_kill_between_checkpoints_logs_each_step_once(project, monkeypatch, mlflow_uri):
    """Killed at step 30 (checkpoint at 20): the resumed run recomputes 25 and 30 but MLflow keeps
    one point per step, and its train_seconds is the loop's time over both segments."""
    from genpipe.tracking import MlflowTrainLogger

    cfg = load_config("params.yaml")
    prepare_dataset(cfg)
    original = MlflowTrainLogger.log_metrics

    def die_after_30(self, step, metrics):
        original(self, step, metrics)
        if step == 30:
            raise KeyboardInterrupt

    monkeypatch.setattr(MlflowTrainLogger, "log_metrics", die_after_30)
    with pytest.raises(KeyboardInterrupt):
        train_family(cfg, "vae")
    monkeypatch.setattr(MlflowTrainLogger, "log_metrics", original)
    run_id = load_checkpoint(project / "models/vae/last.pt")["meta"]["mlflow_run_id"]
    client = MlflowClient(mlflow_uri)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [5, 10, 15, 20, 25, 30]
    resumed = train_family(cfg, "vae", resume=True)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(5, 41, 5))
    seconds = load_checkpoint(resumed.checkpoint)["train_seconds"]
    assert client.get_run(run_id).data.metrics["train_seconds"] == pytest.approx(seconds)


def test_resume_without_an_interrupted_run_is_an_input_error(project):
    prepare_dataset(load_config("params.yaml"))
    with pytest.raises(InputError, match="last.pt: no checkpoint here"):
        train_family(load_config("params.yaml"), "vae", resume=True)


def test_batch_larger_than_the_data_is_an_input_error(project):
    prepare_dataset(load_config("params.yaml"))
    with pytest.raises(InputError, match="train.batch_size"):
        train_family(load_config("params.yaml", ["train.batch_size=5000"]), "vae")
    assert not (project / "models").exists()


@pytest.mark.gpu
def test_cuda_bf16_training_and_device_independent_sampling(project):
    """On a GPU: the same loop with bf16 autocast trains, and a seed gives the same noise."""
    cfg = load_config("params.yaml", ["train.device=cuda", "train.steps=60"])
    prepare_dataset(cfg)
    out = train_family(cfg, "vae")
    assert out.losses["loss"] < 10 and torch.isfinite(torch.tensor(out.losses["loss"]))
    from genpipe.artifacts import load_trained

    cpu_model, _ = load_trained(cfg, "vae", "cpu")
    gpu_model, _ = load_trained(cfg, "vae", "cuda")
    a = cpu_model.sample(8, generator=torch.Generator().manual_seed(0))
    b = gpu_model.sample(8, generator=torch.Generator().manual_seed(0)).cpu()
    assert torch.allclose(a, b, atol=1e-3)


_FAULTS = """
import ctypes, resource, sys, torch
from genpipe.runtime import reuse_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.mallopt(-3, 128 * 1024)  # glibc's initial mmap threshold, held fixed: a known starting point
libc.mallopt(-1, 128 * 1024)  # and its initial trim threshold
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        batch = [torch.ones(2_000_000) for _ in range(8)]  # 8 x 8 MB of activations
        del batch  # freed together: the top of the heap is trimmed, or not
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
untuned = faults()
ok = reuse_freed_memory()
faults()
print(ok, untuned, faults())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_tensor_memory_is_reused_instead_of_faulted_in_again():
    import subprocess

    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True).stdout.split()
    ok, untuned, tuned = out[0] == "True", int(out[1]), int(out[2])
    assert ok
    assert untuned >= 10 * 8  # every 8 MB tensor mapped and faulted in afresh (~2,000 pages, fewer with huge pages)
    assert tuned * 10 < untuned


def test_a_non_finite_loss_fails_with_one_line_and_keeps_the_last_checkpoint(project):
    """Divergence is not a finished run: the step and the values are named, the weights of the
    last checkpoint are what stays, and nothing is stepped with a nan gradient."""
    from genpipe.models.base import OptimizerGroup
    from genpipe.training.loop import train_loop
    from genpipe.training.world import LocalWorld

    class Diverging(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))
            self.calls = 0

        def optimizer_groups(self):
            return {"model": OptimizerGroup([self.w], 1e-2, (0.9, 0.999), 0.0)}

        def training_losses(self, x, labels, phase):
            self.calls += 1
            return {"loss": self.w.sum() * (float("nan") if self.calls == 5 else 1.0)}

        def sample(self, n, labels=None, generator=None, options=None):
            return torch.zeros(n, 1, 8, 8)

    saved = []

    class Keep:
        def save(self, state, step, final, metrics):
            saved.append((step, state["model"]["w"].clone()))

    cfg = load_config("params.yaml", ["train.checkpoint_every=2", "train.sample_every=1000"]).train
    data = type("Split", (), {"images": torch.zeros(64, 1, 8, 8, dtype=torch.uint8),
                              "labels": torch.zeros(64, dtype=torch.long), "__len__": lambda self: 64})()
    model = Diverging()
    with pytest.raises(InputError, match=r"^vae: training diverged at step 5 \(loss nan, gradient norm nan\); "
                                         r"the last checkpoint \(step 4\) is kept"):
        train_loop(model, data, cfg, seed=0, device=torch.device("cpu"), world=LocalWorld(), logger=None,
                   checkpointer=Keep(), meta={"family": "vae"})
    assert [s for s, _ in saved] == [2, 4]
    assert torch.isfinite(model.w).all()  # the nan gradient never reached the weights
