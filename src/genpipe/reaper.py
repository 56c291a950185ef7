"""What a genpipe process starts ends with it, however it ends.

:func:`reap_on_exit` starts, once per process, a small watcher process that notes this
process's descendants twice a second. When this process is gone — it returned, crashed, or
was killed with SIGKILL, where no handler of its own runs — the watcher sends SIGTERM to every
descendant it saw that is still alive (same pid, same start time) and to their own children,
then SIGKILL to whatever is left 5 s later. It exists for the servers genpipe starts and that
do not end with a killed parent: a local Ray cluster's agents (they outlive a killed driver by
up to minutes) and Prefect's temporary API server (it outlives it for good). Processes started
elsewhere (an external Ray cluster at ``RAY_ADDRESS``, a Prefect server at
``PREFECT_API_URL``) are not descendants and are never touched.

Run as ``python -m genpipe.reaper PID START_TIME``; it imports nothing but psutil.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil

POLL_S = 0.5
GRACE_S = 5.0

_started: set[int] = set()  # the pids (this process, or a fork of it) that have a watcher
_lock = threading.Lock()


def reap_on_exit() -> None:
    """Start this process's watcher unless it has one; a no-op after the first call."""
    pid = os.getpid()
    with _lock:
        if pid in _started:
            return
        _started.add(pid)
        started = psutil.Process(pid).create_time()
        # its own session: a Ctrl-C at the terminal reaches this process's group, not the
        # watcher; no inherited pipes, so nobody waiting for this process's output waits for it
        subprocess.Popen(
            [sys.executable, "-m", "genpipe.reaper", str(pid), repr(started)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )


def _alive(pid: int, started: float) -> psutil.Process | None:
    """The process ``pid`` if it is still the one that started at ``started``, and not a zombie."""
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - started) > 0.05 or p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except psutil.Error:
        return None


def watch(parent_pid: int, parent_started: float) -> None:
    """Note ``parent_pid``'s descendants until it is gone, then end those still running."""
    me = os.getpid()
    seen: dict[int, float] = {}
    rounds = 0
    while (parent := _alive(parent_pid, parent_started)) is not None:
        try:
            children = parent.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            if child.pid != me:
                try:
                    seen.setdefault(child.pid, child.create_time())
                except psutil.Error:
                    pass
        rounds += 1
        if rounds % 20 == 0:  # forget the ones that ended (Ray starts and ends workers all day)
            seen = {pid: t for pid, t in seen.items() if _alive(pid, t) is not None}
        time.sleep(POLL_S)
    left: dict[int, psutil.Process] = {}
    for pid, started in seen.items():
        if (p := _alive(pid, started)) is None:
            continue
        left[p.pid] = p
        try:
            left.update((c.pid, c) for c in p.children(recursive=True) if c.pid != me)
        except psutil.Error:
            pass
    for p in left.values():
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(list(left.values()), timeout=GRACE_S)
    for p in still:
        try:
            p.kill()
        except psutil.Error:
            pass


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]), float(sys.argv[2]))
