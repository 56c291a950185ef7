"""The one error type for bad user input.

Anything the user can fix (a config key, a data file, a URI) raises :class:`InputError`
with a single line naming the culprit. The CLI prints that line and exits with code 2;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input: config, data or URI. The message is one line that names the culprit."""

    exit_code = 2
