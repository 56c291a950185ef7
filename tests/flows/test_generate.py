"""The on-demand generation flow on Prefect's local API: what it leaves for the user in Prefect."""

from __future__ import annotations

import sys

import pytest

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

from flows import generate
from flows.generate import ARTIFACT_KEY, batch_generation


def test_batch_generation_leaves_an_artifact_naming_its_outputs(in_trained, prefect_api, tmp_path):
    out = tmp_path / "on-demand"
    state = batch_generation(family="vae", n=4, seed=1, out=str(out), return_state=True)
    assert state.is_completed(), state
    res = state.result()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
        )
    assert len(artifacts) == 1 and artifacts[0].type == "markdown"
    text = artifacts[0].data
    assert "| images | 4 |" in text and "| family | vae |" in text
    for value in (res["out"], res["manifest_uri"], res["job_id"]):
        assert f"`{value}`" in text
    assert res["out"] == str(out) and res["num_images"] == 4


def test_the_flow_command_line_gives_bad_input_one_line_and_exit_2(project, prefect_api, monkeypatch, capsys, caplog):
    """`python -m flows.generate` with no trained model: the task fails on Prefect's API, and the
    command ends as `genpipe`'s do: one line naming the file, exit 2, no traceback in the log."""
    monkeypatch.setattr(sys, "argv", ["flows.generate", "--family", "vae", "--n", "3", "--out", str(project / "out")])
    with pytest.raises(SystemExit) as exit_:
        generate.main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "genpipe: error: models/vae/checkpoint.pt: no trained model; run `genpipe train --family vae` first\n")
    prefect = [r for r in caplog.records if r.name.startswith("prefect.")]
    assert any("Finished in state Failed" in r.getMessage() for r in prefect)  # the run is FAILED on Prefect
    assert all(r.exc_info is None for r in prefect)  # its log has the culprit's line, not a traceback
    assert not (project / "out").exists()
