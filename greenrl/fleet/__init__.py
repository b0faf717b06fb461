"""A fleet of simulated vLLM nodes behind one router (issue #17): config, router, cluster simulator, baselines.

Every node is the existing ``SimNode``; the load is a ServeGen category scaled to the fleet. Modules, one
job each: ``config`` (``envs/fleets/*.yaml`` -> frozen dataclasses), ``router`` (length-aware pools, least
outstanding work), ``cluster`` (``FleetSim``: nodes, power states, routing, accounting), ``capacity`` (each
node configuration's capacity and power from the surrogate), ``planner`` (the DynamoLLM-style integer
program), ``policies`` (static-max, reactive autoscaler, planner, oracle), ``evaluate`` (a day of each),
``env`` (``FleetEnv``, ``FleetCodec``), ``learn`` (MaskablePPO warm-started from the planner; ``LearnedFleet``).

Public names: FleetConfig, load_fleet, Router, FleetSim, FleetAction, FleetSnapshot, FleetResult.
"""

from __future__ import annotations

from greenrl.fleet.cluster import FleetAction, FleetResult, FleetSim, FleetSnapshot
from greenrl.fleet.config import FleetConfig, load_fleet
from greenrl.fleet.router import Router

__all__ = ["FleetAction", "FleetConfig", "FleetResult", "FleetSim", "FleetSnapshot", "Router", "load_fleet"]
