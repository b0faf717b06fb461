"""Pickle trust: SB3 ``.zip`` models are cloudpickle, and loading one runs whatever code it carries.

greenrl loads a ``.zip`` only from a run folder that recorded its hash when training wrote it
(``record_pickle``, into ``<run>/pickle_sha256.json``), or when the user says they trust its maker
(``--trust-pickle``). A zip copied from elsewhere, or changed after training wrote it, is refused by
``check_pickle``. Exported controller folders (``greenrl.policy``) need no such trust: they hold only
numbers and JSON.

The record guards against zips from elsewhere and zips edited in place, not against someone who can
write to the run folder itself (they can rewrite the record too): keep run folders where only you write.

Public names: PICKLE_RECORD, check_pickle, record_pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from greenrl.errors import InputError
from greenrl.ioutil import atomic_write_text

__all__ = ["PICKLE_RECORD", "check_pickle", "record_pickle"]

logger = logging.getLogger(__name__)

PICKLE_RECORD = "pickle_sha256.json"
"""The run folder's record: ``{"<path relative to the run>": "<sha256>"}`` for every zip training wrote."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_record(run: Path) -> dict[str, str]:
    try:
        data = json.loads((run / PICKLE_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return (
        {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(data, dict) else {}
    )


def record_pickle(run: str | Path, path: str | Path) -> str:
    """Record the sha256 of ``path`` (a zip inside ``run``) in ``run``'s record; returns the hash.

    Call it right after ``model.save(path)``: ``train`` (for ``best/model.zip`` and ``checkpoint/model.zip``).
    """
    run, path = Path(run), Path(path)
    rel = path.resolve().relative_to(run.resolve()).as_posix()
    record = _read_record(run)
    record[rel] = _sha256(path)
    atomic_write_text(run / PICKLE_RECORD, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record[rel]


def _run_of(path: Path) -> Path | None:
    """The run folder whose record names ``path``: its folder or one of the two above it.

    (``<run>/best/model.zip``, ``<run>/snapshots/<timesteps>/model.zip``.)
    """
    for folder in path.parents[:3]:
        if (folder / PICKLE_RECORD).is_file():
            return folder
    return None


def check_pickle(path: str | Path, *, trust_pickle: bool = False, where: str = "--policies") -> None:
    """Refuse to unpickle ``path`` unless its run folder recorded its hash, or ``trust_pickle``.

    Raises:
        InputError: the zip is not in a run folder with a record, the record does not name it, or its
            hash differs from the recorded one.
    """
    path = Path(path)
    if trust_pickle:
        logger.warning("loading %s with --trust-pickle: an SB3 zip is a pickle and runs the code inside it", path)
        return
    fix = (
        "evaluate the exported controller folder (<run>/controller) instead, which holds no code; or pass "
        "--trust-pickle if you trust whoever made the zip"
    )
    run = _run_of(path)
    if run is None:
        problem = f"an SB3 zip is a pickle that runs code when loaded, and no {PICKLE_RECORD} vouches for this one"
        raise InputError(where, str(path), problem, fix)
    rel = path.resolve().relative_to(run.resolve()).as_posix()
    recorded = _read_record(run).get(rel)
    if recorded is None:
        raise InputError(where, str(path), f"{run / PICKLE_RECORD} does not record {rel}", fix)
    digest = _sha256(path)
    if digest != recorded:
        problem = f"hashes to {digest[:12]}..., {PICKLE_RECORD} recorded {recorded[:12]}...: it changed since training"
        raise InputError(where, str(path), problem, fix)
