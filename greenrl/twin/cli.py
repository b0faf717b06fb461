"""``python -m greenrl.twin``: the digital twin, a vLLM-protocol server backed by the simulator.

``python -m greenrl.twin --port 8000 --scenario tiny --time-scale 10`` serves a scenario's node until
SIGTERM or SIGINT. The node starts in the scenario's initial knobs, or in those given with ``--tp``,
``--replicas``, ``--max-num-seqs``, ``--sm-clock-mhz`` and ``--prefill-sm-clock-mhz`` (so a launcher can
start it like ``vllm serve`` at a given TP). It binds loopback unless ``--allow-remote``, and changes
knobs over HTTP (``POST /greenrl/knobs``, what ``python -m greenrl.controller --twin`` uses) only with
``--allow-control``; both warn, for the twin has no authentication.

SIGTERM or SIGINT stops it quietly with exit code 0 at any time: while it starts (loading the scenario,
compiling the simulator) it just exits; once serving, it stops listening, cuts the open requests (their
simulated requests are aborted) and exits, with no traceback.

Public names: main.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from greenrl.errors import InputError, exit_on_input_error
from greenrl.twin.livesim import LiveSim
from greenrl.twin.server import TwinServer

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


DESCRIPTION = (
    "Digital twin: a loopback HTTP server that speaks vLLM's OpenAI-compatible protocol, served by the simulator."
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m greenrl.twin", description=DESCRIPTION)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: loopback only; another needs --allow-remote)"
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other than loopback: the twin has no authentication, anyone who reaches it is served",
    )
    p.add_argument(
        "--allow-control",
        action="store_true",
        help="serve POST /greenrl/knobs (what the controller's --twin mode sets knobs with); off: 403. "
        "Anyone who reaches the twin may then set its knobs",
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free one)")
    p.add_argument("--scenario", default="tiny", help="scenario name in envs/ or a YAML path (default: tiny)")
    p.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per wall second (default: 1)")
    p.add_argument("--capacity", type=int, default=100_000, help="requests over the twin's lifetime (default: 1e5)")
    p.add_argument("--tick-ms", type=float, default=20.0, help="wall ms between simulation steps (default: 20)")
    p.add_argument("--model-name", default=None, help="served model name (default: the scenario's model)")
    p.add_argument("--tp", type=int, default=None, help="initial tensor-parallel degree (default: the scenario's)")
    p.add_argument("--replicas", type=int, default=None, help="initial replicas (default: GPUs // tp)")
    p.add_argument("--max-num-seqs", type=int, default=None, help="initial max_num_seqs (default: the scenario's)")
    p.add_argument("--sm-clock-mhz", type=int, default=None, help="initial SM clock, MHz (default: the scenario's)")
    prefill_help = "initial prefill SM clock, MHz (0: none; default: the scenario's)"
    p.add_argument("--prefill-sm-clock-mhz", type=int, default=None, help=prefill_help)
    p.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    return p


class _Stop(BaseException):
    """SIGTERM or SIGINT before the twin serves: exit quietly (not an ``Exception``, so nothing catches it)."""


def _stop_starting(signum: int, frame: object) -> None:
    raise _Stop(signum)


async def _serve(server: TwinServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(f"greenrl twin listening on http://{server.host}:{server.port}", flush=True)
    failed = asyncio.create_task(server.failed.wait())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([failed, stopped], return_when=asyncio.FIRST_COMPLETED)
    failed.cancel()
    stopped.cancel()
    await server.close()
    if server.failed.is_set():
        raise SystemExit(1)


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Run the twin until SIGTERM or SIGINT."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 0 <= args.port <= 65535:
        raise InputError("--port", "port", f"{args.port} is out of range", "use 0 to 65535")
    if not _is_loopback(args.host):
        if not args.allow_remote:
            raise InputError(
                "--host",
                "host",
                f"{args.host} is not loopback: the twin has no authentication",
                "bind 127.0.0.1, or pass --allow-remote on a trusted network",
            )
        logger.warning("the twin listens on %s: anyone who reaches it is served (--allow-remote)", args.host)
    if args.allow_control:
        logger.warning("POST /greenrl/knobs is on (--allow-control): anyone who reaches the twin may set its knobs")
    initial = {"tp": args.tp, "replicas": args.replicas, "max_num_seqs": args.max_num_seqs}
    clocks = {"sm_clock_mhz": args.sm_clock_mhz, "prefill_sm_clock_mhz": args.prefill_sm_clock_mhz}
    # a stop asked for while starting (the scenario load and kernel compile take a second or so)
    previous = {sig: signal.signal(sig, _stop_starting) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        sim = LiveSim.from_scenario(args.scenario, args.capacity, initial | clocks)
        sim.advance_to(1e-3)  # compile / load the numba kernel before serving
    except _Stop as stop:
        logger.info("signal %s while starting: exiting", stop.args[0])
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    server = TwinServer(
        sim,
        model_name=args.model_name or sim.node.config.model,
        time_scale=args.time_scale,
        tick_s=args.tick_ms / 1000.0,
        host=args.host,
        port=args.port,
        allow_control=args.allow_control,
    )
    try:
        asyncio.run(_serve(server))
    except (KeyboardInterrupt, asyncio.CancelledError):  # a signal in the instants around the loop's own handlers
        logger.info("interrupted: exiting")
    return 0
