"""Progress for people and for logs: a bar at a terminal, a line per milestone elsewhere."""

from __future__ import annotations

import io

from genpipe import runtime
from genpipe.runtime import MilestoneLog, interactive, progress_bar


def test_milestones_are_a_line_per_tenth_and_one_at_the_end(capsys):
    bar = MilestoneLog(95, 0, "vae")
    for _ in range(95):
        bar.update(1)
        bar.set_postfix(loss="1.25", refresh=False)  # tqdm's keyword, as the feature network passes it
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "vae: 10/95 steps (11 %) loss=1.25" and lines[-1] == "vae: 95/95 steps (100 %) loss=1.25"
    assert len(lines) == 10  # 10, 20, ... 90, then the end
    resumed = MilestoneLog(100, 60, "gan")  # a resumed run counts from where it was
    for _ in range(40):
        resumed.update(1)
    resumed.close()
    assert [line.split()[1] for line in capsys.readouterr().err.splitlines()] == ["70/100", "80/100", "90/100", "100/100"]


def test_a_terminal_gets_a_bar_a_log_or_ci_gets_milestones(monkeypatch):
    tty = io.StringIO()
    tty.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(runtime.sys, "stderr", tty)
    monkeypatch.delenv("CI", raising=False)
    assert interactive() and not isinstance(progress_bar(10, "x", "step"), MilestoneLog)
    monkeypatch.setenv("CI", "true")
    assert not interactive() and isinstance(progress_bar(10, "x", "step"), MilestoneLog)
    monkeypatch.setenv("CI", "false")
    assert interactive()
    log = io.StringIO()
    monkeypatch.setattr(runtime.sys, "stderr", log)  # a log file
    monkeypatch.delenv("CI")
    assert not interactive()
    with progress_bar(10, "x", "step") as shown:
        shown.update(10)
    with progress_bar(10, "quiet", "step", enabled=False) as quiet:
        quiet.update(10)
    assert log.getvalue() == "x: 10/10 steps (100 %)\n"  # the disabled one wrote nothing
