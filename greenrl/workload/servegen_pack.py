"""Pack ServeGen category folders into the compact ``.npz`` files shipped in ``greenrl/data/servegen/``.

Reads and validates every category first, then writes each file to a temporary name beside its
target and renames it into place, so a bad input or an interrupted run leaves the old files intact.
What is kept (and what is not) is described in ``greenrl/data/servegen/LICENSES.md``.

Run from the repository root::

    .venv/bin/python -m greenrl.workload.servegen_pack --src ../shared/data/servegen --out greenrl/data/servegen

Public names: pack, main.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

import numpy as np

from greenrl.errors import exit_on_input_error
from greenrl.workload.servegen import servegen_categories
from greenrl.workload.servegen_data import read_servegen_folder

__all__ = ["main", "pack"]

SOURCE = "github.com/alibaba/ServeGen data/, commit f891d1189eb32b3868dfc443800c4150548c282a, Apache-2.0"


def _replace_bytes(target: Path, payload: bytes) -> None:
    """Put ``payload`` at ``target`` through a synced temporary file in the same folder and a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def pack(src: Path, out: Path, categories: list[str]) -> dict[str, Path]:
    """Read ``src/<category>`` for each category and write ``out/<category>.npz``.

    Args:
        src: the ServeGen ``data`` folder (holding ``language/``, ``reason/``, ...).
        out: the folder to write into (``greenrl/data/servegen``).
        categories: category names such as ``language/m-large``.

    Returns:
        The file written for each category.

    Raises:
        InputError: from reading any category; nothing is written then.
    """
    arrays = {}
    for category in categories:
        data = read_servegen_folder(src / category)
        arrays[category] = {**data.to_arrays(), "source": np.array(f"{SOURCE}, {category}")}
    written = {}
    for category, fields in arrays.items():
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **fields)  # type: ignore[arg-type]
        written[category] = out / f"{category}.npz"
        _replace_bytes(written[category], buffer.getvalue())
    return written


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints each file written and its size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("categories", nargs="*", default=servegen_categories(), help="default: the shipped ones")
    parser.add_argument("--src", type=Path, default=Path("../shared/data/servegen"), help="ServeGen data folder")
    parser.add_argument("--out", type=Path, default=Path("greenrl/data/servegen"), help="where the npz files go")
    args = parser.parse_args(argv)
    for category, path in pack(args.src, args.out, args.categories).items():
        print(f"{category}: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
