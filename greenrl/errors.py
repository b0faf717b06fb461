"""Errors that carry what a user needs to fix bad input: where, which field, and how.

Public names: InputError, exit_on_input_error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

__all__ = ["InputError", "exit_on_input_error"]

P = ParamSpec("P")
R = TypeVar("R")


class InputError(ValueError):
    """Bad user input: a file, flag or value that greenrl cannot use.

    Args:
        where: the file, flag or object the bad value came from (``envs/x.yaml``, ``--tp``).
        field: the field or column at fault.
        problem: what is wrong with it.
        fix: what to do instead.
    """

    def __init__(self, where: str, field: str, problem: str, fix: str) -> None:
        self.where, self.field, self.problem, self.fix = where, field, problem, fix
        super().__init__(f"{where}: {field}: {problem}; fix: {fix}")


def exit_on_input_error(main: Callable[P, R]) -> Callable[P, R]:
    """Turn an ``InputError`` escaping a CLI entry point into a one-line message and exit code 2."""

    @wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return main(*args, **kwargs)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
