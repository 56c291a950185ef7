"""The one error type for bad user input.

Anything the user can fix (a config key, a data file, a URI) raises :class:`InputError`
with a single line naming the culprit. The CLI prints that line and exits with code 2;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


class InputError(Exception):
    """Bad input: config, data or URI. The message is one line that names the culprit."""

    exit_code = 2


def without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` part of its host removed (for messages)."""
    scheme, sep, rest = str(url).partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}" if sep else str(url)


def exit_from(entry: Callable[[], int | None]) -> NoReturn:
    """End a command-line entry point: ``entry()``'s code (0 for None); bad input is its one line
    on stderr and exit 2; Ctrl-C is one line and exit 130; anything else keeps its traceback."""
    try:
        code = entry() or 0
    except InputError as exc:
        print(f"genpipe: error: {exc}", file=sys.stderr)
        code = InputError.exit_code
    except KeyboardInterrupt:
        print("genpipe: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
