"""The deployments on a real Prefect server, the way a user runs them: `prefect server start`,
`python -m flows.deployments serve` beside it, the server's scheduler firing the pipeline's
schedule, and `prefect deployment ls`. Every process runs under a temporary PREFECT_HOME."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound

from flows.deployments import GENERATION, PIPELINE, build_deployments
from flows.deployments import main as deployments_main
from tests.conftest import TINY, write_params

REPO = Path(__file__).resolve().parents[2]
PREFECT = Path(sys.executable).with_name("prefect")  # the venv's CLI, beside this interpreter
# seconds between the pipeline's runs: serve starts the first within its 10 s prefetch window,
# and the test pauses the deployment before the second comes into that window
INTERVAL = 15
# the cheapest real pipeline: one Gaussian mixture on 8x8 digits, a tiny feature network
PIPELINE_PARAMS = {
    **TINY,
    "families": ["gmm"],
    "gmm": {"components": 2, "max_iter": 20, "dequantization_samples": 1},
    "features": {**TINY["features"], "steps": 30},
    "generate": {"n": 8, "batch_size": 8},
    "pipeline": {"record_with_dvc": False},
}
FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


@dataclass
class Service:
    """A subprocess in its own process group, its output in a log file."""

    name: str
    proc: subprocess.Popen
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:] if self.log.exists() else []
        return f"--- {self.name} (exit code {self.proc.poll()}), last lines:\n" + "\n".join(text)

    def stop(self) -> None:
        """SIGTERM to the whole group (the server's uvicorn, serve's flow-run processes), then
        SIGKILL to whatever of the group is left."""
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=5)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:  # the whole group has exited
            pass


class Services(list[Service]):
    def start(self, name: str, cmd: list[str], cwd: Path, env: dict[str, str], logs: Path) -> Service:
        log = logs / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.append(Service(name, proc, log))
        return self[-1]

    def logs(self) -> str:
        return "\n".join(s.tail() for s in self)

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        """Poll ``check`` until it returns something truthy; fail with every log tail otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            dead = [s.name for s in self if s.proc.poll() is not None]
            assert not dead, f"{', '.join(dead)} exited while waiting for {what}\n{self.logs()}"
            time.sleep(0.5)
        pytest.fail(f"no {what} within {timeout:.0f} s\n{self.logs()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any PREFECT_* of the caller's, under ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PREFECT_HOME": str(home), **extra}


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def services() -> Iterator[Services]:
    running = Services()
    yield running
    for s in reversed(running):  # serve before the server it talks to
        s.stop()


@pytest.fixture
def prefect_server(tmp_path, services) -> str:
    """`prefect server start` on a free port, its own sqlite database; returns the API URL."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    port = _free_port()
    env = _env(
        home,
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",  # nothing here looks at the UI; skips copying its build
        # the main scheduler's loop (60 s by default) as short as the recent-deployments one's:
        # either may schedule the new deployment first
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
    )
    services.start("prefect-server", [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                   cwd=tmp_path, env=env, logs=tmp_path)
    url = f"http://127.0.0.1:{port}/api"
    services.wait_for("answer from /api/health", lambda: _healthy(url), timeout=90)
    return url


def _pipeline_runs(client: SyncPrefectClient, deployment_id) -> list[FlowRun]:
    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def _registered(client: SyncPrefectClient, names: tuple[str, ...]) -> list | None:
    """The deployments called ``names``, or None while any is not registered yet."""
    try:
        return [client.read_deployment_by_name(name) for name in names]
    except ObjectNotFound:
        return None


def _finished(client: SyncPrefectClient, run_id) -> FlowRun | None:
    run = client.read_flow_run(run_id)
    return run if run.state.type in FINAL else None


def test_scheduled_pipeline_runs_on_a_real_server(prefect_server, services, tmp_path, mlflow_uri):
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, PIPELINE_PARAMS)
    env = _env(tmp_path / "prefect-home", PREFECT_API_URL=prefect_server, PREFECT_RUNNER_POLL_FREQUENCY="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               MLFLOW_TRACKING_URI=mlflow_uri, COLUMNS="200")  # COLUMNS: untruncated names in the CLI's table
    services.start("serve", [sys.executable, "-m", "flows.deployments", "serve", "--interval", str(INTERVAL)],
                   cwd=project, env=env, logs=tmp_path)

    with SyncPrefectClient(prefect_server) as client:
        names = (f"genpipe-pipeline/{PIPELINE}", f"genpipe-batch-generation/{GENERATION}")
        scheduled, _ = services.wait_for("both deployments registered", lambda: _registered(client, names), timeout=60)
        assert [s.schedule.interval.total_seconds() for s in scheduled.schedules] == [INTERVAL]
        # the CLI's filter requests, while the first run is still ahead
        ls = subprocess.run([str(PREFECT), "deployment", "ls"], env=env, cwd=project, capture_output=True, text=True,
                            timeout=60)
        assert ls.returncode == 0, f"{ls.stdout}\n{ls.stderr}\n{services.logs()}"
        assert all(name in ls.stdout for name in names), ls.stdout
        # the server's scheduler creates the runs; serve then takes one (it leaves Scheduled)
        services.wait_for("run created by the scheduler",
                          lambda: [r for r in _pipeline_runs(client, scheduled.id) if r.auto_scheduled], timeout=30)
        picked = services.wait_for("run picked up by serve", lambda: [
            r for r in _pipeline_runs(client, scheduled.id) if r.state.type != StateType.SCHEDULED], timeout=30)
        assert len(picked) == 1, [(r.name, r.state.name) for r in picked]
        client.pause_deployment(scheduled.id)  # deletes the later scheduled runs: one pipeline at a time on 2 cores
        run = services.wait_for("end of the picked run", lambda: _finished(client, picked[0].id), timeout=120)
        assert run.state.type == StateType.COMPLETED, f"{run.state}\n{services.logs()}"
    assert (project / "reports" / "comparison.md").exists()  # the pipeline ran in the project folder


def test_interval_replaces_the_cron_and_must_be_positive(project, monkeypatch, capsys):
    scheduled, on_demand = build_deployments("params.yaml", interval=90)
    assert [s.schedule.interval.total_seconds() for s in scheduled.schedules] == [90]
    assert on_demand.schedules == []
    monkeypatch.setattr(sys, "argv", ["flows.deployments", "register", "--interval", "0"])
    with pytest.raises(SystemExit) as exit_info:
        deployments_main()
    assert exit_info.value.code == 2 and "--interval: must be a positive number of seconds" in capsys.readouterr().err
