"""Config: the shipped params.yaml, profiles, -S overrides, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydantic
import pytest
import yaml

from genpipe.cli import main
from genpipe.config import Config, config_type, load_config, parse_override, resolve, validate_config
from genpipe.errors import InputError
from genpipe.models import FAMILIES

REPO = Path(__file__).resolve().parents[1]


def test_shipped_params_are_valid_for_every_profile():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw["profiles"]) >= {"quick", "full"}
    for profile in raw["profiles"]:
        cfg = load_config(REPO / "params.yaml", [f"profile={profile}"])
        assert cfg.profile == profile
    full = load_config(REPO / "params.yaml", ["profile=full"])
    assert full.train.use_gpu and full.train.steps > load_config(REPO / "params.yaml").train.steps


def test_every_registered_family_has_a_config_section():
    assert set(config_type().model_fields) - set(Config.model_fields) == set(FAMILIES)
    for name, fam in FAMILIES.items():
        assert isinstance(validate_config({}).family(name), fam.config_type)


def test_override_values_are_parsed_as_yaml():
    assert parse_override("train.steps=10") == (["train", "steps"], 10)
    assert parse_override("vae.channels=[8, 16]") == (["vae", "channels"], [8, 16])
    assert parse_override("tracking.experiment=my exp") == (["tracking", "experiment"], "my exp")
    cfg = resolve({"profiles": {"quick": {}}}, ["vae.lr=1e-3", "vae.channels=[8,16]"])
    assert cfg.vae.lr == pytest.approx(1e-3) and cfg.vae.channels == (8, 16)


def test_profile_beats_base_and_override_beats_profile():
    raw = {"train": {"steps": 5}, "profile": "full", "profiles": {"quick": {}, "full": {"train": {"steps": 50}}}}
    assert resolve(raw).train.steps == 50
    assert resolve(raw, ["train.steps=7"]).train.steps == 7
    assert resolve(raw, ["profile=quick"]).train.steps == 5


def test_config_is_frozen():
    cfg = validate_config({})
    with pytest.raises(pydantic.ValidationError):
        cfg.train.steps = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["vae.lr=abc"], "vae.lr"),  # wrong type
        (["vae.lrr=0.1"], "vae.lrr"),  # unknown key
        (["train.ema_decay=1.5"], "train.ema_decay"),  # out of range
        (["train.runner=slurm"], "train.runner"),  # not one of the choices
        (["vae.betas=[0.5, 1.2]"], "vae.betas"),
        (["families=[vae, vea]"], "families"),
    ],
)
def test_bad_override_names_the_key_and_the_file(tmp_path, overrides, key):
    params = tmp_path / "params.yaml"
    params.write_text("profiles: {quick: {}}\n")
    with pytest.raises(InputError) as err:
        load_config(params, overrides)
    msg = str(err.value)
    assert f": {key}:" in msg and str(params) in msg and "\n" not in msg


def test_the_old_sweep_key_says_where_it_went(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("evaluate: {diffusion_sweep: [{sampler: ddim, steps: 10}]}\nprofiles: {quick: {}}\n")
    with pytest.raises(InputError, match=r"evaluate.diffusion_sweep: Extra inputs are not permitted \(now evaluate.sweep.diffusion\)$"):
        load_config(params)


def test_bad_key_in_the_file_and_in_an_inactive_profile(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("trian: {steps: 3}\nprofiles: {quick: {}}\n")
    with pytest.raises(InputError, match=r"params.yaml: trian: Extra inputs"):
        load_config(params)
    params.write_text("profiles: {quick: {}, full: {train: {stepz: 3}}}\n")
    with pytest.raises(InputError, match=r"profiles\.full\.train\.stepz"):
        load_config(params)
    with pytest.raises(InputError, match=r"profile: unknown profile 'fast'"):
        load_config(params, ["profile=fast"])


def test_missing_or_broken_params_file(tmp_path):
    with pytest.raises(InputError, match="no such params file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("override", ["vae.lr=abc", "vae.lrr=0.1"])
def test_cli_exits_2_with_one_line_and_writes_nothing(project, capsys, override):
    before = sorted(p.name for p in project.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--family", "vae", "-S", override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and override.split("=")[0] in err[0] and "params.yaml" in err[0]
    assert sorted(p.name for p in project.iterdir()) == before  # no models/, no mlflow.db


def test_console_script_exit_code(project):
    """The installed `genpipe` entry point, as DVC and users call it."""
    exe = Path(sys.executable).with_name("genpipe")
    proc = subprocess.run([exe, "train", "--family", "vae", "-S", "vae.lr=abc"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("genpipe: error: params.yaml: vae.lr:"), proc.stderr
    proc = subprocess.run([exe, "train", "--family", "vqvae"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr  # one line, naming the choices
    assert "argument --family: invalid choice: 'vqvae'" in proc.stderr and "'diffusion', 'flow', 'gan'" in proc.stderr


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["evaluate.num_samples=40", "evaluate.grid_samples=16"], "evaluate.num_samples: 40 is fewer than the 64 feature dimensions (features.feature_dim)"),
        (["features.feature_dim=128"], "evaluate.sweep_samples: 100 is fewer than the 128"),
        (["features.extractor=inception", "evaluate.sweep_samples=2048"], "evaluate.num_samples: 1000 is fewer than the 2048 feature dimensions (Inception's pool3)"),
        (["evaluate.pr_k=100", "evaluate.num_samples=100"], "evaluate.pr_k: k=100 needs fewer than the 100 samples of evaluate.num_samples"),
    ],
)
def test_sample_counts_the_metrics_cannot_use_fail_when_params_load(tmp_path, overrides, key):
    """Not after hours of training: evaluate's FID and k-NN metrics need these counts."""
    params = tmp_path / "params.yaml"
    params.write_text("evaluate: {sweep_samples: 100, sweep: {diffusion: [{sampler: ddim, steps: 10}]}}\nprofiles: {quick: {}}\n")
    with pytest.raises(InputError) as err:
        load_config(params, overrides)
    assert f"{params}: {key}" in str(err.value) and "\n" not in str(err.value)
    load_config(params, ["features.feature_dim=100"])  # exactly as many samples as dimensions is enough
    load_config(params, ["features.feature_dim=128", "evaluate.sweep={}"])  # no sweep, no sweep count


def test_a_preset_sits_between_the_profile_and_the_overrides():
    raw = {"profile": "full", "profiles": {"quick": {}, "full": {"data": {"resolution": 32}, "train": {"steps": 50}}},
           "presets": {"grey28": {"data": {"resolution": 28}}, "big": {"train": {"steps": 7}}}}
    assert resolve(raw).data.resolution == 32 and resolve(raw).preset is None
    assert resolve(raw, ["preset=grey28"]).data.resolution == 28  # the preset beats the profile
    assert resolve(raw, ["preset=grey28", "data.resolution=64"]).data.resolution == 64  # -S beats the preset
    assert resolve(raw, ["preset=big"]).train.steps == 7 and resolve(raw, ["preset=big"]).data.resolution == 32
    with pytest.raises(InputError, match=r"preset: unknown preset 'mnist' \(defined: grey28, big\)$"):
        resolve(raw, ["preset=mnist"])
    bad = {**raw, "presets": {**raw["presets"], "typo": {"data": {"resolutoin": 28}}}}
    with pytest.raises(InputError, match=r"presets.typo.data.resolutoin"):  # every preset is checked, not only the active one
        resolve(bad)


def test_shipped_presets_are_valid_on_every_profile():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw["presets"]) >= {"grey28", "colour32"}
    for profile in raw["profiles"]:
        for preset in raw["presets"]:
            cfg = load_config(REPO / "params.yaml", [f"profile={profile}", f"preset={preset}"])
            assert cfg.data.resolution == raw["presets"][preset]["data"]["resolution"]
