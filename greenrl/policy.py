"""Exported controllers: a trained policy as a self-contained, pickle-free folder.

A controller folder holds ``policy.npz`` (the actor MLP's weights, read with ``allow_pickle=False``)
and ``controller.json`` (observation fields in order with units and scales, knob values, the action
mask, the policy file's sha256, seed, training and evaluation figures). Loading needs neither
stable-baselines3 nor torch nor pickle; ``ControllerPolicy.predict`` has SB3's signature and returns
the same actions as the trained model (a plain-numpy forward pass, ~60 us).

Public names: ControllerPolicy, export_controller, load_controller, FORMAT.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from greenrl import __version__
from greenrl.errors import InputError
from greenrl.ioutil import atomic_write_text

__all__ = ["FORMAT", "ControllerPolicy", "export_controller", "load_controller"]

FORMAT = "greenrl-controller/1"


def _relu(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.maximum(x, 0.0)


_ACTIVATIONS: dict[str, Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]] = {"tanh": np.tanh, "relu": _relu}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_controller(model: Any, env: Any, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s actor (an SB3 PPO/MaskablePPO MlpPolicy) and ``env``'s specs to ``folder``.

    Args:
        model: the trained SB3 model.
        env: the (unwrapped) ``ServingEnv`` it was trained on.
        folder: destination; written to a temp folder beside it, then renamed into place.
        extra: more manifest fields (seed, timesteps, eval KPIs, config hash).
    """
    from greenrl.env.observation import OBS_CLIP, OBS_FIELDS

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().numpy() for k, v in model.policy.state_dict().items()}
    layers = []
    i = 0
    while f"mlp_extractor.policy_net.{i}.weight" in state:
        layers.append((state[f"mlp_extractor.policy_net.{i}.weight"], state[f"mlp_extractor.policy_net.{i}.bias"]))
        i += 2  # Linear, activation, Linear, ...
    layers.append((state["action_net.weight"], state["action_net.bias"]))
    arrays = {f"w{j}": w.astype(np.float32) for j, (w, _) in enumerate(layers)}
    arrays |= {f"b{j}": b.astype(np.float32) for j, (_, b) in enumerate(layers)}
    activation = type(model.policy.activation_fn()).__name__.lower()
    if activation not in _ACTIVATIONS:
        raise InputError("export", "activation", f"{activation} is not supported", "train with tanh or relu")

    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        for p in tmp.iterdir():
            p.unlink()
    tmp.mkdir(exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    (tmp / "policy.npz").write_bytes(buffer.getvalue())
    manifest = {
        "format": FORMAT,
        "greenrl_version": __version__,
        "env_id": f"greenrl/{env.scenario.name}-v{env.scenario.version}",
        "scenario": env.scenario.name,
        "env_version": env.scenario.version,
        "observation": [asdict(f) for f in OBS_FIELDS],
        "obs_clip": OBS_CLIP,
        "normalization": "each field divided by its scale, then clipped to +-obs_clip (done by ServingEnv)",
        "knobs": [{"name": n, "values": v} for n, v in zip(env.knob_names, env.knob_values, strict=True)],
        "action_mask": env.action_masks().astype(int).tolist(),
        # the prefill clock governor the policy was trained with (the live node's governor mirrors it)
        "prefill_clock": {"ttft_target_s": env.scenario.control.prefill_clock_ttft_s},
        "policy": {
            "file": "policy.npz",
            "sha256": _sha256(tmp / "policy.npz"),
            "layers": len(layers),
            "activation": activation,
            "algorithm": type(model).__name__,
        },
        **(extra or {}),
    }
    atomic_write_text(tmp / "controller.json", json.dumps(manifest, indent=1, default=float) + "\n")
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        if old.exists():
            for p in old.iterdir():
                p.unlink()
            old.rmdir()
        folder.rename(old)
        tmp.rename(folder)
        for p in old.iterdir():
            p.unlink()
        old.rmdir()
    else:
        tmp.rename(folder)
    return folder


class ControllerPolicy:
    """A loaded controller: SB3-style ``predict`` over the environment's (normalized) observation."""

    def __init__(self, manifest: dict[str, Any], weights: dict[str, npt.NDArray[np.float32]], folder: Path) -> None:
        self.manifest = manifest
        self.folder = folder
        n = manifest["policy"]["layers"]
        self._layers = [(weights[f"w{j}"], weights[f"b{j}"]) for j in range(n)]
        self._act = _ACTIVATIONS[manifest["policy"]["activation"]]
        self.knob_names = [k["name"] for k in manifest["knobs"]]
        self.knob_values = [k["values"] for k in manifest["knobs"]]
        self.nvec = [len(v) for v in self.knob_values]
        mask = np.asarray(manifest["action_mask"], dtype=bool)
        self._mask_splits = np.split(mask, np.cumsum(self.nvec)[:-1]) if self.nvec else []
        self.observation_names = [f["name"] for f in manifest["observation"]]

    @property
    def prefill_clock_ttft_s(self) -> float | None:
        """The prefill clock governor's TTFT target the policy was trained with (s).

        None: the prefill clock whenever a prompt waits (also for controllers exported before the
        manifest recorded it).
        """
        section = self.manifest.get("prefill_clock") or {}
        target = section.get("ttft_target_s")
        return None if target is None else float(target)

    def predict(
        self,
        observation: npt.ArrayLike,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[npt.NDArray[np.int64], None]:
        """The action (one index per knob) for an observation or a batch of them."""
        obs = np.asarray(observation, dtype=np.float32)
        single = obs.ndim == 1
        x = obs.reshape(1, -1) if single else obs
        if x.shape[1] != len(self.observation_names):
            raise InputError(
                str(self.folder),
                "observation",
                f"expected {len(self.observation_names)} fields, got {x.shape[1]}",
                "build observations from the manifest's field list",
            )
        for w, b in self._layers[:-1]:
            x = self._act(x @ w.T + b)
        w, b = self._layers[-1]
        logits = x @ w.T + b
        actions = []
        for part, mask in zip(np.split(logits, np.cumsum(self.nvec)[:-1], axis=1), self._mask_splits, strict=True):
            actions.append(np.where(mask, part, -np.inf).argmax(axis=1))
        out = np.stack(actions, axis=1).astype(np.int64)
        return (out[0] if single else out), None

    def knobs(self, action: npt.ArrayLike) -> dict[str, int]:
        """The knob values an action selects."""
        idx = np.asarray(action).reshape(-1)
        return {n: int(v[i]) for n, v, i in zip(self.knob_names, self.knob_values, idx, strict=True)}


def load_controller(folder: str | Path, expect_env: Any = None) -> ControllerPolicy:
    """Load and verify a controller folder (hash, format, and, given an env, its observation and knobs)."""
    from greenrl.env.observation import OBS_FIELDS

    folder = Path(folder)
    path = folder / "controller.json"
    if not path.is_file():
        raise InputError(str(folder), "controller.json", "not found", "give an exported controller folder")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(str(path), "controller.json", f"not valid JSON ({err.msg})", "re-export it") from None
    if manifest.get("format") != FORMAT:
        raise InputError(str(path), "format", f"{manifest.get('format')!r} is not {FORMAT}", "re-export the controller")
    policy_file = folder / manifest["policy"]["file"]
    if not policy_file.is_file():
        raise InputError(str(folder), manifest["policy"]["file"], "policy file missing", "re-export the controller")
    digest = _sha256(policy_file)
    if digest != manifest["policy"]["sha256"]:
        raise InputError(
            str(policy_file),
            "sha256",
            f"is {digest[:12]}..., the manifest says {manifest['policy']['sha256'][:12]}...",
            "the file was changed or corrupted: re-export it",
        )
    expected = [asdict(f) for f in OBS_FIELDS]
    if manifest["observation"] != expected:
        names = [f["name"] for f in manifest["observation"]]
        raise InputError(
            str(path),
            "observation",
            f"spec {names} does not match this greenrl's observation {[f['name'] for f in expected]}",
            "retrain or re-export with this greenrl version",
        )
    if expect_env is not None:
        knobs = [{"name": n, "values": v} for n, v in zip(expect_env.knob_names, expect_env.knob_values, strict=True)]
        if manifest["knobs"] != knobs:
            raise InputError(
                str(path),
                "knobs",
                f"controller knobs {manifest['knobs']} differ from scenario {expect_env.scenario.name}'s {knobs}",
                "use a controller trained on this scenario",
            )
    with np.load(policy_file, allow_pickle=False) as data:
        weights = {k: data[k] for k in data.files}
    return ControllerPolicy(manifest, weights, folder)
