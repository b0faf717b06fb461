"""The training callback: reward terms, energy, SLO and knobs to tensorboard; periodic evaluation, the best kept.

Public names: make_callbacks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from greenrl.env.scenario import Scenario
from greenrl.ioutil import atomic_write_text
from greenrl.train_resume import save_model

__all__ = ["make_callbacks"]


def make_callbacks(
    run: Path,
    scenario: Scenario,
    cfg: dict[str, Any],
    evaluate_on: Callable[..., dict[str, float]],
    *,
    report: bool = False,
) -> Any:
    """The training callback (an SB3 ``BaseCallback``): logs, evaluates every ``eval_every_steps``, keeps the best.

    Args:
        run: the run folder (``eval.csv``, ``best/``).
        scenario: the scenario trained on; every knob of its ``control.knobs`` is logged as ``knobs/<name>``.
        cfg: the agent's hyperparameters (``eval_every_steps``, ``val_episodes``).
        evaluate_on: ``greenrl.train.evaluate_policy_on``.
        report: print one line per evaluation to stdout (timesteps, validation return, held-out energy
            and SLO attainment): for a run without a progress bar or not on a terminal, which would
            otherwise print nothing until the end.
    """
    from stable_baselines3.common.callbacks import BaseCallback

    val_episodes = int(cfg.get("val_episodes", 8))
    knob_names = tuple(scenario.control.knobs)  # every knob of the scenario, prefill clock included

    class Progress(BaseCallback):
        """Logs reward terms, energy, SLO and knobs; evaluates, keeps and exports the best policy."""

        def __init__(self) -> None:
            super().__init__()
            self.sums: dict[str, float] = {}
            self.count = 0
            self.best = -np.inf
            self.next_eval = int(cfg["eval_every_steps"])
            best = run / "best" / "eval.json"
            if best.is_file():  # resuming: the saved best stays the one to beat
                self.best = float(json.loads(best.read_text())["val_return"])

        def _on_training_start(self) -> None:
            if self.num_timesteps == 0:
                self.evaluate()  # the starting policy (cloned from the teacher, if any) is a candidate too
            self.next_eval = (self.num_timesteps // int(cfg["eval_every_steps"]) + 1) * int(cfg["eval_every_steps"])

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                terms = info.get("reward_terms")
                if terms is None:
                    continue
                self.count += 1
                for k, v in terms.items():
                    self.sums[f"reward/{k}"] = self.sums.get(f"reward/{k}", 0.0) + v
                knobs = info["knobs"]
                for name in knob_names:
                    self.sums[f"knobs/{name}"] = self.sums.get(f"knobs/{name}", 0.0) + getattr(knobs, name)
                self.sums["energy/kwh_per_step"] = self.sums.get("energy/kwh_per_step", 0.0) + info["energy_j"] / 3.6e6
                self.sums["slo/missed_per_step"] = self.sums.get("slo/missed_per_step", 0.0) + info["missed"]
            if self.num_timesteps >= self.next_eval:
                self.next_eval += int(cfg["eval_every_steps"])
                self.evaluate()
            return True

        def _on_rollout_end(self) -> None:
            for k, v in self.sums.items():
                self.logger.record(k, v / max(self.count, 1))
            self.sums, self.count = {}, 0

        def evaluate(self) -> None:
            """The best validation return chooses the best model; the held-out KPIs are only logged."""
            val = evaluate_on(self.model, scenario, val_episodes=val_episodes)
            held_out = evaluate_on(self.model, scenario)
            for k, v in val.items():
                self.logger.record(f"val/{k}", v)
            for k, v in held_out.items():
                self.logger.record(f"eval/{k}", v)
            row = {"timesteps": self.num_timesteps, **{f"val_{k}": v for k, v in val.items()}, **held_out}
            if report:
                print(
                    f"eval at {self.num_timesteps} timesteps: val return {val['return']:.4g}, "
                    f"held-out energy {held_out['energy_kwh']:.4g} kWh, "
                    f"SLO attainment {held_out['slo_attainment']:.2%}",
                    flush=True,
                )
            csv = run / "eval.csv"
            header = "" if csv.exists() else ",".join(row) + "\n"
            with csv.open("a") as handle:
                handle.write(header + ",".join(f"{v:.6g}" for v in row.values()) + "\n")
            if val["return"] > self.best:
                self.best = val["return"]
                (run / "best").mkdir(exist_ok=True)
                save_model(self.model, run / "best" / "model.zip")
                atomic_write_text(run / "best" / "eval.json", json.dumps(row, indent=1) + "\n")

    return Progress()
