"""greenrl: learned energy control for LLM inference serving.

A fitted surrogate of a vLLM node (``greenrl.surrogate``), a serving simulator (``greenrl.sim``), a
Gymnasium environment (``greenrl.env``), exported controllers (``greenrl.policy``) and the command
``greenrl <train|evaluate|fit|predict|characterize|twin|control|loadgen>``.

``import greenrl`` registers the shipped scenarios as ``greenrl/<scenario>-v0`` with entry-point
strings, as Gymnasium's own ``envs/__init__.py`` does: it reads no file and imports neither the
simulator nor pandas; the scenario is loaded when ``gym.make`` is called. Scenarios of your own
(``$GREENRL_ENVS``) register with ``greenrl.register_scenarios()``.
"""

from gymnasium.envs.registration import register, registry

from greenrl.bundled import SCENARIOS

__version__ = "0.1.0"

__all__ = ["ENTRY_POINT", "SCENARIOS", "__version__", "register_scenarios"]

ENTRY_POINT = "greenrl.env.serving_env:make_env"


def _register(names: tuple[str, ...] | list[str]) -> list[str]:
    ids = []
    for name in names:
        env_id = f"greenrl/{name}-v0"
        if env_id not in registry:
            register(id=env_id, entry_point=ENTRY_POINT, kwargs={"scenario": name})
        ids.append(env_id)
    return ids


def register_scenarios() -> list[str]:
    """Register ``greenrl/<name>-v0`` for every YAML in ``scenarios_dir()`` (lists that folder); returns the ids."""
    from greenrl.env.scenario import scenario_names

    return _register(scenario_names())


_register(SCENARIOS)

FLEET_ENTRY_POINT = "greenrl.fleet.env:make_fleet_env"
"""The shipped fleets (``envs/fleets/*.yaml``) register as ``greenrl/fleet-<name>-v1``."""
for _fleet in ("default", "mixed", "spread", "large"):
    if f"greenrl/fleet-{_fleet}-v1" not in registry:
        register(id=f"greenrl/fleet-{_fleet}-v1", entry_point=FLEET_ENTRY_POINT, kwargs={"fleet": _fleet})
