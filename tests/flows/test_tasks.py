"""The tasks' retry policy on Prefect's local API: bad user input (InputError) runs once,
anything else is retried."""

from __future__ import annotations

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State

import tasks
from genpipe.errors import InputError
from tasks.stages import RETRYING, retry_unless_input_error


def _failing_task(error: Exception, failures: int, calls: list[int]):
    """A task with the pipeline's retry options (no delay) that raises ``error`` ``failures`` times."""
    @task(name="flaky", **{**RETRYING, "retries": 2, "retry_delay_seconds": 0})
    def flaky() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return "done"
    return flaky


def _run_in_a_flow(stage, *args) -> State:
    """The final state of one call of the task ``stage``, inside a flow run as in the pipeline."""
    states: list[State] = []

    @flow(name="retry-check")
    def check() -> None:
        states.append(stage(*args, return_state=True))

    check(return_state=True)
    return states[0]


def test_input_error_is_not_retried(prefect_api):
    calls: list[int] = []
    state = _run_in_a_flow(_failing_task(InputError("params.yaml: vae.lr: not a number"), 1, calls))
    assert state.is_failed() and calls == [1]


def test_other_errors_are_retried(prefect_api):
    calls: list[int] = []
    state = _run_in_a_flow(_failing_task(ConnectionError("S3 endpoint reset the connection"), 2, calls))
    assert state.is_completed() and state.result() == "done" and len(calls) == 3


@pytest.mark.parametrize("stage", ["train", "features", "generate"])
def test_retrying_stages_keep_the_condition_through_with_options(stage):
    # the pipeline flow sets `retries` with `with_options`: the condition must stay
    assert getattr(tasks, stage).with_options(retries=3).retry_condition_fn is retry_unless_input_error


def test_generate_with_bad_input_runs_once(project, prefect_api):
    generate = tasks.generate.with_options(retries=2, retry_delay_seconds=0)  # as the pipeline does
    state = _run_in_a_flow(generate, "params.yaml", None, None)  # neither family nor run id
    assert state.is_failed()
    with pytest.raises(InputError, match="--family or --run-id"):
        state.result()
    with get_client(sync_client=True) as client:
        assert client.read_task_run(state.state_details.task_run_id).run_count == 1
