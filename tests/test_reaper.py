"""A genpipe process killed with SIGKILL leaves nothing running: not its local Ray cluster (whose
agents outlive a killed driver by up to minutes), not Prefect's temporary API server (which
outlives it for good), not the watcher that ends them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

# a flow on Prefect's temporary API that starts the local Ray cluster, as `make run` does
HOLD = textwrap.dedent("""
    import time
    from prefect import flow
    from flows import command_line
    from genpipe.runtime import ensure_ray

    @flow
    def hold():
        ensure_ray()
        print("ready", flush=True)
        time.sleep(600)

    command_line(hold)
""")


def _tree(pid: int) -> dict[int, float]:
    return {p.pid: p.create_time() for p in psutil.Process(pid).children(recursive=True)}


def _running(tree: dict[int, float]) -> list[str]:
    left = []
    for pid, started in tree.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {' '.join(p.cmdline())[:80]}")
        except psutil.Error:
            pass
    return left


def test_a_killed_pipeline_process_leaves_nothing_running(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PREFECT_API_URL")}
    root = Path(__file__).resolve().parents[1]
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PYTHONPATH=f"{root / 'src'}{os.pathsep}{root}")
    proc = subprocess.Popen([sys.executable, "-c", HOLD], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        tree = _tree(proc.pid)
        names = " ".join(" ".join(psutil.Process(p).cmdline()) for p in tree if _running({p: tree[p]}))
        # what the test is about is there: Ray's processes, Prefect's server and the watcher
        assert "raylet" in names and "uvicorn" in names and "genpipe.reaper" in names, names
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while (left := _running(tree)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"still running 30 s after SIGKILL: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
