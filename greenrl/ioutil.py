"""Small file helpers: atomic writes (text and figures) and reading a user's YAML file.

An interrupted command never leaves a half-written file; a YAML file that cannot be parsed is one clear error.

Public names: atomic_write_text, atomic_savefig, read_yaml.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from greenrl.errors import InputError

__all__ = ["atomic_savefig", "atomic_write_text", "read_yaml"]


def read_yaml(path: Path, kind: str) -> Any:
    """The parsed ``path`` (``yaml.safe_load``); bad syntax or a non-text file is one ``InputError`` naming it.

    ``kind`` names what the file should be in the fix, e.g. ``"scenario"``: "give a scenario YAML".
    """
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(
            str(path), "file", f"not valid YAML ({' '.join(str(err).split())})", "fix the syntax"
        ) from None
    except (UnicodeDecodeError, RecursionError) as err:
        raise InputError(
            str(path), "file", f"not a YAML text file ({type(err).__name__})", f"give a {kind} YAML"
        ) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def _replacing(path: str | Path) -> Iterator[str]:
    """A temp file beside ``path`` to write; renamed over ``path`` on success, removed on any failure."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, fsync it, then rename it over ``path``."""
    with _replacing(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_savefig(fig: Any, path: str | Path, *, dpi: int = 100) -> None:
    """Save a matplotlib figure as a PNG beside ``path`` under a temp name, then rename it over ``path``."""
    with _replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
