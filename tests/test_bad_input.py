"""Bad input, as a user gives it on the command line: one line naming the culprit, exit code 2,
no secret in the line, and nothing written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from genpipe.artifacts import write_config_json
from genpipe.cli import main
from genpipe.config import load_config
from genpipe.data import prepare_dataset
from genpipe.storage import atomic_write_bytes
from genpipe.training import train_family


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr().err


def outputs(root: Path) -> set[str]:
    """What the stages write, below ``root``."""
    return {p.relative_to(root).as_posix() for top in ("data", "models", "metrics", "figures", "generated", "reports")
            for p in (root / top).rglob("*")}


FLOAT_FIELDS = ["vae.weight_decay", "vae.kl_weight", "train.grad_clip", "features.weight_decay",
                "flow.sampling.temperature", "gan.sampling.truncation", "diffusion.sampling.guidance_scale",
                "storage.connect_timeout"]

CASES = [  # (argv, what the line must name, what it must not show)
    *[(["prepare", "-S", f"{key}={value}"], key, None) for key in FLOAT_FIELDS for value in (".inf", ".nan")],
    (["prepare", "-S", "train.steps=true"], "train.steps", None),  # a boolean is not a number
    (["prepare", "-S", "vae.latent_dim=false"], "vae.latent_dim", None),
    (["prepare", "-S", "stability_seeds=[true]"], "stability_seeds", None),  # nor inside a list
    (["prepare", "-S", "vae.betas=[true, 0.9]"], "vae.betas", None),
    (["prepare", "-S", "evaluate.sweep={diffusion: [{sampler: ddim, steps: true}]}"], "evaluate.sweep.diffusion[0]", None),
    (["prepare", "-S", "paths.models=params.yaml"], "paths.models", None),  # a file where a folder goes
    (["prepare", "-S", "paths.metrics=params.yaml/m"], "paths.metrics", None),
    (["prepare", "-S", "train.storage_path=params.yaml"], "train.storage_path", None),
    (["prepare", "-S", "seed=-7"], "seed", None),
    (["prepare", "-S", "seed=99999999999999999999"], "seed", None),
    (["train", "--family", "vae", "--seed", "99999999999999999999"], "--seed", None),
    (["generate", "--family", "vae", "--seed", "-7"], "--seed", None),
    (["generate", "--family", "vae", "--n", "0"], "--n", None),  # never the default 64
    (["generate", "--family", "vae", "--n", "many"], "--n", None),
    (["latents", "--family", "vae", "--seeds", "0", "99999999999999999999"], "--seeds", None),
    (["prepare", "-S", "storage.secret_access_key=98765432109876543210"], "storage.secret_access_key", "98765432109876543210"),
    (["prepare", "-S", "storage.access_key_id=12345678901234567"], "storage.access_key_id", "12345678901234567"),
    (["prepare", "-S", "storage.endpoint_url=http://me:hunter2@127.0.0.1:9000"], "storage.endpoint_url", "hunter2"),
]


@pytest.mark.parametrize(("argv", "culprit", "hidden"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(project, capsys, argv, culprit, hidden):
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and culprit in err, err
    if hidden is not None:
        assert hidden not in err
    assert outputs(project) == set()


@pytest.mark.parametrize(("content", "says"), [(b"seed: 0\n\xff\xfe broken\n", "not UTF-8"), (None, "a directory"),
                                             (b"", "empty"), (b"# only a comment\n", "empty"),
                                             (b"- 1\n- 2\n", "a mapping"), (b"a: [1\n", "line 2 is not valid YAML")],
                         ids=["not UTF-8", "a directory", "empty", "only a comment", "a list", "bad YAML"])
def test_a_params_file_that_is_no_params_file_is_one_line(project, capsys, content, says):
    params = project / "other.yaml"
    if content is None:
        params.mkdir()
    else:
        params.write_bytes(content)
    code, err = run_cli(["prepare", "--params", str(params)], capsys)
    assert code == 2 and err.count("\n") == 1 and str(params) in err and says in err, err


def test_credentials_given_as_params_never_reach_a_stored_config(project):
    cfg = load_config("params.yaml", ["storage.access_key_id=AKIAGENPIPETEST", "storage.secret_access_key=s3cr3t-value"])
    assert cfg.storage.access_key_id.get_secret_value() == "AKIAGENPIPETEST"  # still usable by the store
    write_config_json(project / "models/vae", cfg.to_dict())  # what sits beside a checkpoint (and in MLflow)
    text = (project / "models/vae/config.json").read_text()
    assert "AKIAGENPIPETEST" not in text and "s3cr3t-value" not in text


def test_atomic_writes_get_the_mode_a_plain_write_would(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.png", b"x")
        (tmp_path / "plain").write_bytes(b"x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.png").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o644


def test_evaluate_writes_nothing_when_an_input_is_missing(project):
    """The feature network is missing: the figures a previous evaluation left stay as they were
    (evaluate measures everything first and writes last)."""
    cfg = load_config("params.yaml")
    prepare_dataset(cfg)
    train_family(cfg, "vae")
    figure = project / "figures/vae/samples.png"
    figure.parent.mkdir(parents=True)
    figure.write_bytes(b"an earlier evaluation's grid")
    from genpipe.errors import InputError
    from genpipe.evaluation.stage import evaluate_family

    with pytest.raises(InputError, match="run `genpipe features` first"):
        evaluate_family(cfg, "vae")
    assert figure.read_bytes() == b"an earlier evaluation's grid"
    assert not (project / "metrics").exists()


# ----------------------------------------------------------------------------- inputs found broken inside a stage


def runs(mlflow_uri: str) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("genpipe")
    return 0 if experiment is None else len(client.search_runs([experiment.experiment_id], max_results=10_000))


def _break_shard(shard: Path, how: str) -> None:
    import json

    from genpipe.storage import sha256_file

    data = bytearray(shard.read_bytes())
    if how.startswith("truncated"):
        shard.write_bytes(bytes(data[: len(data) // 2]))
        if how.endswith("card updated"):  # its hash matches: the reader itself must say it cannot read it
            card_path = shard.parent / "card.json"
            card = json.loads(card_path.read_text())
            next(s for s in card["shards"] if s["path"] == shard.name)["sha256"] = sha256_file(shard)
            card_path.write_text(json.dumps(card))
    else:  # one flipped bit in the middle: Parquet may still read it, the card's sha256 does not match
        data[len(data) // 2] ^= 0x10
        shard.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "one bit flipped", "truncated, card updated"])
def test_a_broken_shard_is_one_line_naming_it_and_no_run_is_created(project, mlflow_uri, capsys, how):
    assert main_ok(["prepare"], capsys)
    shard = next((project / "data/prepared").glob("*.parquet"))
    _break_shard(shard, how)
    before = runs(mlflow_uri)
    capsys.readouterr()  # MLflow's own log lines when its store is first opened
    for argv in (["train", "--family", "vae"], ["features"]):
        code, err = run_cli(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and shard.name in err, err
    assert runs(mlflow_uri) == before and not (project / "models").exists()


@pytest.mark.parametrize("store", ["http://me:hunter2@127.0.0.1:{port}", "sqlite:///{project}/no-such-folder/mlflow.db",
                                   "sqlite:///{project}"])
def test_a_tracking_store_that_cannot_be_used_is_one_line_at_once(project, capsys, monkeypatch, store):
    """Not MLflow's four minutes of retries and a traceback: one request, one line, nothing trained."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main_ok(["prepare"], capsys)
    uri = store.format(port=port, project=project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, err = run_cli(["train", "--family", "vae"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("genpipe: error: MLFLOW_TRACKING_URI "), err
    assert "hunter2" not in err and not (project / "models").exists()


def test_a_card_that_is_no_card_is_one_line(project, capsys):
    assert main_ok(["prepare"], capsys)
    (project / "data/prepared/card.json").write_text("{}")
    code, err = run_cli(["train", "--family", "vae"], capsys)
    assert code == 2 and err.count("\n") == 1 and "card.json: not a dataset card (shape" in err, err


def test_settings_the_data_cannot_take_fail_before_a_run_exists(project, mlflow_uri, capsys):
    assert main_ok(["prepare"], capsys)
    before = runs(mlflow_uri)
    capsys.readouterr()
    for override in ("diffusion.channel_mults=[1,2,2,2,2]", "gmm.pca_components=1000"):
        family = override.split(".")[0]
        code, err = run_cli(["train", "--family", family, "-S", override], capsys)
        assert code == 2 and err.count("\n") == 1 and family in err, err
    assert runs(mlflow_uri) == before and not (project / "models").exists()


def test_a_checkpoint_that_is_not_complete_is_one_line_in_generate_and_resume(project, capsys):
    import torch

    assert main_ok(["prepare"], capsys)
    folder = project / "models/vae"
    folder.mkdir(parents=True)
    torch.save({"format": 1, "family": "vae", "step": 1, "total_steps": 1, "model": {}, "ema": {}, "meta": {}},
               folder / "checkpoint.pt")  # no config: loads under weights_only all the same
    code, err = run_cli(["generate", "--family", "vae", "--n", "2"], capsys)
    assert code == 2 and err.count("\n") == 1 and "checkpoint.pt: not a complete genpipe checkpoint ('config'" in err, err
    assert not (project / "generated").exists()
    torch.save({"format": 1, "family": "vae", "step": 1, "total_steps": 5, "model": {}, "ema": {}, "meta": {},
                "config": {"vae": {"lr": "fast"}}}, folder / "last.pt")  # a config today's genpipe refuses
    code, err = run_cli(["train", "--family", "vae", "--resume"], capsys)
    assert code == 2 and err.count("\n") == 1 and "last.pt: its config is not one this genpipe reads (vae.lr" in err, err


def main_ok(argv: list[str], capsys) -> bool:
    code, err = run_cli(argv, capsys)
    return code == 0 or pytest.fail(err)


def test_sampling_settings_the_model_refuses_leave_no_output_folder(project, capsys):
    """guidance on an unconditional diffusion model fails in the first batch, after the store's
    pre-flight check: that check leaves nothing behind, so no empty output folder does either."""
    assert main_ok(["prepare"], capsys)
    small = ["-S", "diffusion.timesteps=10", "-S", "diffusion.channels=8", "-S", "diffusion.channel_mults=[1,2]",
             "-S", "diffusion.attention_levels=[]", "-S", "diffusion.sampling.steps=2", "-S", "diffusion.steps=2"]
    assert main_ok(["train", "--family", "diffusion", *small], capsys)
    code, err = run_cli(["generate", "--family", "diffusion", "--n", "2", "--out", "out/here", *small,
                         "-S", "diffusion.sampling.guidance_scale=3"], capsys)
    assert code == 2 and err.count("\n") == 1 and "guidance_scale" in err, err
    assert not (project / "out").exists()
