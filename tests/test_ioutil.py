"""Atomic writes: a failed write leaves the old file and no temp file behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from greenrl.ioutil import atomic_savefig, atomic_write_text


def test_a_failed_figure_save_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    path = tmp_path / "plots" / "line.png"  # the folder is made
    atomic_savefig(fig, path)
    first = path.read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert first.startswith(b"\x89PNG") and stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's

    class Broken:
        def savefig(self, target: str, **_: object) -> None:
            Path(target).write_bytes(b"half a png")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_savefig(Broken(), path)
    assert path.read_bytes() == first and sorted(p.name for p in path.parent.iterdir()) == ["line.png"]
    plt.close(fig)


def test_text_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    atomic_write_text(path, "old\n")
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["rows.json"]
