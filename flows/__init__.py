"""Prefect flows: they only compose tasks (see tasks/), never hold logic of their own. Each
module's ``main()`` is a command line that ends as ``genpipe``'s do (:func:`command_line`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NoReturn

from genpipe.errors import InputError, exit_from
from genpipe.reaper import reap_on_exit


class _CulpritLineOnly(logging.Filter):
    """Prefect logs a failed flow or task run with its traceback; bad input (:class:`InputError`)
    keeps the message line alone, which names the culprit."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], InputError):
            record.exc_info, record.exc_text = None, None
        return True


_CULPRIT_LINE_ONLY = _CulpritLineOnly()


def command_line(entry: Callable[[], int | None]) -> NoReturn:
    """Run a flow module's command: what it starts (Prefect's temporary API server, a local Ray
    cluster) ends with it however it ends; bad input is one line and exit 2, with no traceback
    in Prefect's log either; the code of :func:`genpipe.errors.exit_from` otherwise."""
    reap_on_exit()
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_CULPRIT_LINE_ONLY)  # once: the same object
    exit_from(entry)
