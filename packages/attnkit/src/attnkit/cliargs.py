"""Argument helpers shared by the ``attnkit`` command (:mod:`attnkit.cli`) and the commands it
hands over to (``attnkit run`` in :mod:`attnkit.mainjob`).

They live here rather than in :mod:`attnkit.cli` so that a subcommand's module can use them
without importing the command that dispatches to it. Importing this module imports neither
torch nor any plugin.
"""

from __future__ import annotations

import ast
from typing import Any

__all__ = ["CLIError", "parse_param"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status ``code``.

    :param message: the line printed after ``attnkit <command>: error:``.
    :param code: the exit status (default 1).
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def parse_param(text: str) -> tuple[str, Any]:
    """Parse one ``--param NAME=VALUE`` option into ``(name, value)``.

    ``VALUE`` is read as a Python literal (``5``, ``0.25``, ``True``, ``(3, 3)``, ``'x'``); a
    list becomes a tuple (spec parameters are frozen dataclasses), and anything that is not a
    literal stays the stripped string, so bare words like ``mean`` need no quotes.

    >>> parse_param("kernel_size=(3, 5)")
    ('kernel_size', (3, 5))
    >>> parse_param("mode = mean")
    ('mode', 'mean')

    :param text: the option's value, ``"name=value"``.
    :raises CLIError: when there is no ``=`` or the name is empty.
    """
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise CLIError(f"--param must look like name=value, got {text!r}")
    raw = raw.strip()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare word: keep it as a string
    if isinstance(value, list):
        value = tuple(value)
    return name.strip(), value
