"""``python -m greenrl.fleet.reselect RUN``: select a finished fleet run's model again, on every category.

A fleet run selects on the validation days of every category in ``workload.validation_categories``
(``greenrl.fleet.selection.validate_policy``). Runs from before that selected on ``workload.category`` alone;
runs since keep every validated model (``snapshots/<timesteps>/model.zip``). This scores every model a run
kept (its snapshots, or else its ``best`` and its last ``checkpoint``) with today's rule, and writes
``RUN/reselect/summary.json`` (the candidates, the selection, the verdict and the held-out days, as a run
reports them) and ``RUN/reselect/controller``; ``--ship`` also ships a selection that passes the verdict.
The run's own files are left as they were. Each zip is checked against the run's pickle record first.

Public names: reselect, candidates, main.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from greenrl.errors import InputError, exit_on_input_error
from greenrl.ioutil import atomic_write_text

__all__ = ["candidates", "main", "reselect"]

logger = logging.getLogger(__name__)


def candidates(run: Path) -> dict[str, Path]:
    """The models ``run`` kept, by name (``snapshots/<timesteps>``, or ``best`` and a later ``checkpoint``)."""
    snapshots = sorted((run / "snapshots").glob("*/model.zip"), key=lambda p: int(p.parent.name))
    if snapshots:
        return {f"snapshots/{p.parent.name}": p for p in snapshots}
    kept = {name: run / name / "model.zip" for name in ("best", "checkpoint")}
    kept = {name: path for name, path in kept.items() if path.is_file()}
    if len(kept) == 2 and _timesteps(run, "best") == _timesteps(run, "checkpoint"):
        del kept["checkpoint"]  # the last validation was the best: one model, scored once
    if not kept:
        raise InputError(
            str(run), "snapshots", "holds no model: the run stopped before its first validation", "give a finished run"
        )
    return kept


def _timesteps(run: Path, name: str) -> int:
    """The timesteps a candidate was saved at: its snapshot's name, or what the run recorded."""
    if name.startswith("snapshots/"):
        return int(name.removeprefix("snapshots/"))
    if name == "checkpoint":
        return int(json.loads((run / "checkpoint" / "state.json").read_text())["timesteps"])
    summary = json.loads((run / "summary.json").read_text())
    return int(summary["selected"]["timesteps"])


def reselect(run: Path, ship: bool = False, duration_s: float | None = None) -> dict[str, Any]:
    """Score every model ``run`` kept on every validation category; write and return ``reselect/summary.json``.

    ``duration_s``: only each day's first seconds (a smoke test; reported figures are whole days).
    """
    from sb3_contrib import MaskablePPO

    from greenrl.fleet.selection import held_out_report, validate_policy
    from greenrl.fleet.train_entry import fleet_player, recorded_fleet_run
    from greenrl.fleet.trainer import export_selection
    from greenrl.trust import check_pickle

    run = Path(run)
    recorded, config = recorded_fleet_run(run)
    agent, seed, cfg = str(recorded["agent"]), int(recorded["seed"]), dict(recorded["hyperparameters"])
    slo_weight = float(cfg.get("slo_weight", 100.0))
    player = fleet_player(agent, config)
    rows: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    for name, path in candidates(run).items():
        check_pickle(path, where="RUN")
        models[name] = MaskablePPO.load(path, device="cpu")
        row: dict[str, Any] = {"candidate": name, "timesteps": _timesteps(run, name)}
        row |= validate_policy(config, player.as_policy(models[name]), slo_weight, duration_s)
        logger.info("%s: score %.2f, attainment %.4f", name, row["score"], row["slo_attainment"])
        rows.append(row)
    best = max(rows, key=lambda r: float(r["score"]))  # the first of equal scores: the earliest model
    chosen = str(best["candidate"])
    selected = {k: v for k, v in best.items() if k != "candidate"}
    summary: dict[str, Any] = {
        "run": str(run),
        "rule": "mean validation day_score over " + ", ".join(config.workload.validation_categories),
        "candidates": rows,
        "selected_candidate": chosen,
        "timesteps": _timesteps(run, "checkpoint"),
    }
    summary |= held_out_report(config, selected, player.as_policy(models[chosen]), slo_weight, duration_s)
    out = run / "reselect"
    out.mkdir(exist_ok=True)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=float) + "\n")
    ship_to = Path("checkpoints") / player.folder / f"{agent}_s{seed}" if ship else None
    export_selection(models[chosen], player.probe(), out / "controller", ship_to, summary, cfg, agent, seed)
    return summary


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """``python -m greenrl.fleet.reselect RUN [RUN ...] [--ship]``: one line per run, the selection and why."""
    p = argparse.ArgumentParser(prog="python -m greenrl.fleet.reselect", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="fleet run folders (runs/fleet-<name>/<agent>_s<seed>_<stamp>)")
    p.add_argument("--ship", action="store_true", help="also export a selection that passes the ship verdict")
    p.add_argument("--duration-s", type=float, default=None, help="only each day's first seconds (a smoke test)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for run in args.runs:
        s = reselect(run, args.ship, args.duration_s)
        print(
            f"{run}: {s['selected_candidate']} (score {s['selected']['score']:.2f}, validation attainment "
            f"{100 * s['selected']['slo_attainment']:.2f}%), held out {100 * s['energy_saving_vs_static_max']:.1f}% "
            f"saved; {'ships' if s['shippable'] else 'does not ship'}: {s['ship_verdict']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
