"""Exported controllers: a trained policy as a self-contained, pickle-free folder.

A controller folder holds ``policy.npz`` (the actor MLP's weights, read with ``allow_pickle=False``)
and ``controller.json`` (observation fields in order with units and scales, knob values, the action
mask, the policy file's sha256, seed, training and evaluation figures, and ``manifest_sha256``: the
sha256 of the whole manifest in canonical JSON, so that no field, knob values included, can be edited
without the load noticing). Loading needs neither stable-baselines3 nor torch nor pickle;
``ControllerPolicy.predict`` has SB3's signature and returns the same actions as the trained model
(a plain-numpy forward pass, ~60 us).

Every weight is finite (checked at export and at load) and every decision is checked: a non-finite
logit or a knob whose values are all masked out raises ``InvalidDecision`` instead of an index 0
(the live controller falls back to its safe default, reason ``policy_invalid``).

Public names: ControllerPolicy, InvalidDecision, export_controller, load_controller, manifest_digest, FORMAT.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from greenrl import __version__
from greenrl.errors import InputError

__all__ = [
    "FORMAT",
    "ControllerPolicy",
    "InvalidDecision",
    "export_controller",
    "load_controller",
    "manifest_digest",
]

FORMAT = "greenrl-controller/1"
MANIFEST_HASH = "manifest_sha256"
"""The manifest field holding the sha256 of the rest of the manifest (``manifest_digest``)."""


class InvalidDecision(RuntimeError):
    """The policy's output is not a decision: a non-finite logit, or a knob with every value masked out."""


def _relu(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.maximum(x, 0.0)


_ACTIVATIONS: dict[str, Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]] = {"tanh": np.tanh, "relu": _relu}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The sha256 of ``manifest`` without its ``manifest_sha256`` field, in canonical JSON (sorted keys)."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_HASH}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=float)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_weights(where: str, weights: dict[str, npt.NDArray[Any]], n_layers: int, fix: str) -> None:
    """Each layer's ``w<j>`` / ``b<j>`` is a finite 2-D / 1-D float array and the layers chain."""
    prev = None
    for j in range(n_layers):
        for key, ndim in ((f"w{j}", 2), (f"b{j}", 1)):
            arr = weights.get(key)
            if arr is None:
                raise InputError(where, key, "missing from the weights", fix)
            if arr.dtype.kind != "f" or arr.ndim != ndim or arr.size == 0:
                raise InputError(where, key, f"is a {arr.dtype} array of shape {arr.shape}", fix)
            if not np.all(np.isfinite(arr)):
                raise InputError(where, key, f"has {int(np.sum(~np.isfinite(arr)))} NaN or Inf values", fix)
        w, b = weights[f"w{j}"], weights[f"b{j}"]
        if b.shape[0] != w.shape[0] or (prev is not None and w.shape[1] != prev):
            raise InputError(where, f"w{j}", f"shape {w.shape} (bias {b.shape}) does not chain", fix)
        prev = w.shape[0]


def export_controller(model: Any, env: Any, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s actor (an SB3 PPO/MaskablePPO MlpPolicy) and ``env``'s specs to ``folder``.

    The folder is written whole to a fresh temp folder beside it, verified by loading it, then renamed
    into place; an existing folder is moved aside first and put back if the second rename fails, so
    ``folder`` is never half written.

    Args:
        model: the trained SB3 model.
        env: the (unwrapped) ``ServingEnv`` it was trained on.
        folder: destination.
        extra: more manifest fields (seed, timesteps, eval KPIs, config hash).

    Raises:
        InputError: for an unsupported activation or weights that are not finite.
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
    _check_weights("export", arrays, len(layers), "the training diverged: retrain (lower learning rate)")
    if hasattr(env, "controller_manifest"):  # a fleet env (greenrl.fleet.env.FleetEnv) describes itself
        env_part = env.controller_manifest()
    else:
        env_part = {
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
        }
    manifest = {
        "format": FORMAT,
        "greenrl_version": __version__,
        **env_part,
        "policy": {
            "file": "policy.npz",
            "sha256": "",
            "layers": len(layers),
            "activation": activation,
            "algorithm": type(model).__name__,
        },
        **(extra or {}),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        (tmp / "policy.npz").write_bytes(buffer.getvalue())
        manifest["policy"]["sha256"] = _sha256(tmp / "policy.npz")
        try:
            manifest[MANIFEST_HASH] = manifest_digest(manifest)
        except ValueError as err:  # a NaN in an extra field
            raise InputError("export", "extra", f"not JSON without NaN ({err})", "give finite numbers") from None
        (tmp / "controller.json").write_text(json.dumps(manifest, indent=1, default=float) + "\n")
        for p in tmp.iterdir():
            with p.open("rb") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o777 & ~_umask())
        load_controller(tmp)  # what is written loads
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _swap_in(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` to ``folder``; an existing ``folder`` is moved aside, and put back on failure."""
    if not folder.exists():
        tmp.rename(folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
    old.rmdir()
    folder.rename(old)
    try:
        tmp.rename(folder)
    except BaseException:
        old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


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
        """The action (one index per knob) for an observation or a batch of them.

        Raises:
            InputError: for an observation of the wrong width.
            InvalidDecision: for a non-finite logit or a knob whose values are all masked out.
        """
        obs = np.asarray(observation, dtype=np.float32)
        single = obs.ndim == 1
        x = obs.reshape(1, -1) if single else obs
        if x.ndim != 2 or x.shape[1] != len(self.observation_names):
            raise InputError(
                str(self.folder),
                "observation",
                f"expected {len(self.observation_names)} fields, got shape {obs.shape}",
                "build observations from the manifest's field list",
            )
        with np.errstate(all="ignore"):
            for w, b in self._layers[:-1]:
                x = self._act(x @ w.T + b)
            w, b = self._layers[-1]
            logits = x @ w.T + b
        if not np.all(np.isfinite(logits)):
            raise InvalidDecision(f"the policy's logits are not finite ({int(np.sum(~np.isfinite(logits)))} values)")
        actions = []
        parts = np.split(logits, np.cumsum(self.nvec)[:-1], axis=1)
        for name, part, mask in zip(self.knob_names, parts, self._mask_splits, strict=True):
            if not mask.any():
                raise InvalidDecision(f"every value of knob {name} is masked out")
            actions.append(np.where(mask, part, -np.inf).argmax(axis=1))
        out = np.stack(actions, axis=1).astype(np.int64)
        return (out[0] if single else out), None

    def knobs(self, action: npt.ArrayLike) -> dict[str, int]:
        """The knob values an action selects."""
        idx = np.asarray(action).reshape(-1)
        return {n: int(v[i]) for n, v, i in zip(self.knob_names, self.knob_values, idx, strict=True)}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_manifest(manifest: Any, where: str) -> None:
    """The manifest's structure: every field ``ControllerPolicy`` reads, with its type."""
    fix = "re-export the controller"
    if not isinstance(manifest, dict):
        raise InputError(where, "controller.json", f"is a JSON {type(manifest).__name__}, not an object", fix)
    if manifest.get("format") != FORMAT:
        raise InputError(where, "format", f"{str(manifest.get('format'))[:80]!r} is not {FORMAT}", fix)
    policy = manifest.get("policy")
    if not isinstance(policy, dict):
        raise InputError(where, "policy", "missing or not an object", fix)
    for key, kind in (("file", str), ("sha256", str), ("activation", str)):
        if not isinstance(policy.get(key), kind):
            raise InputError(where, f"policy.{key}", "missing or not a string", fix)
    if policy["activation"] not in _ACTIVATIONS:
        raise InputError(where, "policy.activation", f"{policy['activation'][:40]!r} is not tanh or relu", fix)
    if not _is_int(policy.get("layers")) or not 1 <= policy["layers"] <= 64:
        raise InputError(where, "policy.layers", f"{str(policy.get('layers'))[:40]} is not a count 1..64", fix)
    knobs = manifest.get("knobs")
    if not isinstance(knobs, list) or not knobs:
        raise InputError(where, "knobs", "missing, empty or not a list", fix)
    for k in knobs:
        ok = isinstance(k, dict) and isinstance(k.get("name"), str) and isinstance(k.get("values"), list)
        if not ok or not k["values"] or not all(_is_int(v) and v >= 0 for v in k["values"]):
            raise InputError(where, "knobs", f"{str(k)[:80]} is not a name with a list of integer values >= 0", fix)
    n = sum(len(k["values"]) for k in knobs)
    mask = manifest.get("action_mask")
    if not isinstance(mask, list) or len(mask) != n or not all(v in (0, 1) and not isinstance(v, float) for v in mask):
        raise InputError(where, "action_mask", f"is not a list of {n} 0/1 values", fix)
    start = 0
    for k in knobs:
        if not any(mask[start : start + len(k["values"])]):
            raise InputError(where, "action_mask", f"masks out every value of knob {k['name']}", fix)
        start += len(k["values"])
    obs = manifest.get("observation")
    if not isinstance(obs, list) or not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in obs):
        raise InputError(where, "observation", "missing or not a list of named fields", fix)
    target = (manifest.get("prefill_clock") or {}) if isinstance(manifest.get("prefill_clock"), dict | None) else None
    if target is None:
        raise InputError(where, "prefill_clock", "is not an object", fix)
    t = target.get("ttft_target_s")
    if t is not None and not (isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and t >= 0):
        raise InputError(where, "prefill_clock.ttft_target_s", f"{str(t)[:40]} is not a time >= 0 s or null", fix)
    if not isinstance(manifest.get("scenario", ""), str):
        raise InputError(where, "scenario", "is not a string", fix)


def _policy_file(folder: Path, name: str, where: str) -> Path:
    """``policy.file``: a plain file name inside the folder (no path, no link out of it)."""
    fix = "policy.file names a file in the controller folder, e.g. policy.npz: re-export the controller"
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or Path(name).is_absolute():
        raise InputError(where, "policy.file", f"{name[:80]!r} is not a file name inside the folder", fix)
    path = folder / name
    if path.is_symlink() or (path.exists() and path.resolve().parent != folder.resolve()):
        raise InputError(where, "policy.file", f"{name!r} points outside the folder", fix)
    if not path.is_file():
        raise InputError(str(folder), name, "policy file missing", "re-export the controller")
    return path


def _read_weights(path: Path) -> dict[str, npt.NDArray[Any]]:
    fix = "re-export the controller"
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise InputError(str(path), "policy.npz", "is not an npz archive", fix)
            weights = {k: data[k] for k in data.files}
    except InputError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError) as err:
        # ValueError: object arrays (allow_pickle=False) or a bad header
        raise InputError(
            str(path), "policy.npz", f"cannot be read ({type(err).__name__}: {str(err)[:120]})", fix
        ) from None
    if not weights:
        raise InputError(str(path), "policy.npz", "holds no arrays", fix)
    return weights


def load_controller(folder: str | Path, expect_env: Any = None) -> ControllerPolicy:
    """Load and verify a controller folder.

    Checks the manifest's structure, its observation spec (and, given an env, its knobs), the hash of the
    whole manifest and of the policy file, and the weights (finite, float, chaining shapes).

    Raises:
        InputError: for any folder that is not a valid, unmodified export.
    """
    from greenrl.env.observation import OBS_FIELDS

    folder = Path(folder)
    path = folder / "controller.json"
    if not path.is_file():
        raise InputError(str(folder), "controller.json", "not found", "give an exported controller folder")
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        problem = f"not valid JSON ({getattr(err, 'msg', type(err).__name__)})"
        raise InputError(str(path), "controller.json", problem, "re-export it") from None
    where = str(path)
    _check_manifest(manifest, where)
    expected = [asdict(f) for f in OBS_FIELDS]
    if manifest.get("kind") in ("fleet", "fleet-node"):  # the observation of its fleet's env (or of one node)
        fleet = manifest.get("fleet")
        if not isinstance(fleet, str):
            raise InputError(where, "fleet", "missing or not a fleet name", "re-export the controller")
        if manifest["kind"] == "fleet":
            from greenrl.fleet.env import FleetEnv

            expected = FleetEnv(fleet, "eval").codec.observation_spec()
        else:
            from greenrl.fleet.shared import NodeFleetEnv

            expected = NodeFleetEnv(fleet, "eval").nodes_codec.observation_spec()
    if manifest["observation"] != expected:
        names = [f["name"] for f in manifest["observation"]]
        raise InputError(
            where,
            "observation",
            f"spec {names} does not match this greenrl's observation {[f['name'] for f in expected]}",
            "retrain or re-export with this greenrl version",
        )
    if expect_env is not None:
        knobs = [{"name": n, "values": v} for n, v in zip(expect_env.knob_names, expect_env.knob_values, strict=True)]
        if manifest["knobs"] != knobs:
            raise InputError(
                where,
                "knobs",
                f"controller knobs {manifest['knobs']} differ from scenario {expect_env.scenario.name}'s {knobs}",
                "use a controller trained on this scenario",
            )
    recorded = manifest.get(MANIFEST_HASH)
    if not isinstance(recorded, str):
        raise InputError(where, MANIFEST_HASH, "missing", "re-export the controller with this greenrl")
    try:
        digest = manifest_digest(manifest)
    except ValueError:  # NaN / Infinity in the JSON
        digest = "not canonical JSON (NaN or Infinity)"
    if digest != recorded:
        raise InputError(
            where,
            MANIFEST_HASH,
            f"the manifest hashes to {digest[:12]}..., it says {recorded[:12]}...",
            "controller.json was edited or corrupted: re-export it",
        )
    policy_file = _policy_file(folder, manifest["policy"]["file"], where)
    digest = _sha256(policy_file)
    if digest != manifest["policy"]["sha256"]:
        raise InputError(
            str(policy_file),
            "sha256",
            f"is {digest[:12]}..., the manifest says {manifest['policy']['sha256'][:12]}...",
            "the file was changed or corrupted: re-export it",
        )
    weights = _read_weights(policy_file)
    n_layers = manifest["policy"]["layers"]
    _check_weights(str(policy_file), weights, n_layers, "re-export the controller")
    w0, wl = weights["w0"], weights[f"w{n_layers - 1}"]
    n_logits = sum(len(k["values"]) for k in manifest["knobs"])
    if w0.shape[1] != len(expected) or wl.shape[0] != n_logits:
        raise InputError(
            str(policy_file),
            "w0",
            f"maps {w0.shape[1]} inputs to {wl.shape[0]} logits; the manifest needs {len(expected)} -> {n_logits}",
            "re-export the controller",
        )
    return ControllerPolicy(manifest, {k: v.astype(np.float32) for k, v in weights.items()}, folder)
