"""Where the cells of ``python -m greenrl.sweep`` run: in this process, or as tasks on Ray (local or a cluster).

Both backends pin torch to one intra-op thread per task, so a cell trains the same policy bit for bit
in a Ray worker as in the serial run (same seed, same CPU type). Ray is an optional dependency (the
``sweep`` extra) imported only by :class:`RayBackend`.

Public names: Backend, SerialBackend, RayBackend, make_backend, ray_installed, check_reachable, TASK_THREADS,
RAY_TIMEOUT_S.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal, Protocol, TypeVar

from greenrl.errors import InputError

__all__ = [
    "RAY_TIMEOUT_S",
    "TASK_THREADS",
    "Backend",
    "RayBackend",
    "SerialBackend",
    "check_reachable",
    "make_backend",
    "ray_installed",
]

TASK_THREADS = 1
"""torch intra-op threads per task, in both backends (a thread count changes float rounding)."""

CONNECT_TIMEOUT_S = 5.0
"""How long ``--ray-address`` may take to accept a TCP connection before the sweep gives up."""

RAY_TIMEOUT_S = 30.0
"""How long a ``--ray-address`` that accepts connections may take to answer as a Ray head (``--ray-timeout``)."""

_FIX_ADDRESS = "start the cluster with `ray start --head` on that machine, or drop --ray-address to run locally"

T = TypeVar("T")
BackendName = Literal["serial", "ray"]


class Backend(Protocol):
    """Runs ``fn(item)`` for every item and yields ``(item, result or exception)`` as each finishes."""

    name: str
    description: str

    def map(self, fn: Callable[[T], Any], items: list[T]) -> Iterator[tuple[T, Any]]:
        """Yield ``(item, fn(item))``, or ``(item, exception)`` when ``fn`` raised."""
        ...

    def close(self) -> None:
        """Release workers (nothing for the serial backend)."""
        ...


def ray_installed() -> bool:
    """Whether ``import ray`` would work (the ``sweep`` extra)."""
    return importlib.util.find_spec("ray") is not None


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, with one line, when nothing listens at ``host:port`` (``ray.init`` would retry for minutes).

    Raises:
        InputError: ``address`` is not ``host:port`` (``ray://`` allowed) or refuses or ignores a connection.
    """
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise InputError("--ray-address", "ray_address", f"{address!r} is not host:port", "e.g. 10.0.0.5:6379")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or type(err).__name__)
        raise InputError(
            "--ray-address", "ray_address", f"no Ray cluster answers at {address} ({reason.lower()})", _FIX_ADDRESS
        ) from None


class SerialBackend:
    """Every task in this process, one after the other, torch pinned to ``TASK_THREADS`` during each."""

    name = "serial"
    description = "serial (this process)"

    def map(self, fn: Callable[[T], Any], items: list[T]) -> Iterator[tuple[T, Any]]:
        """Run the tasks in order; an ``InputError`` stops the sweep, any other exception is the task's result."""
        for item in items:
            try:
                yield item, fn(item)
            except InputError:
                raise
            except Exception as err:  # one failed cell must not lose the others
                yield item, err

    def close(self) -> None:
        """Nothing to release."""


class RayBackend:
    """Tasks on Ray: a local instance with ``num_cpus`` CPUs, or the cluster at ``address``.

    Each task asks for one CPU, so at most ``num_cpus`` cells run at once on a local instance.
    """

    name = "ray"

    def __init__(self, address: str | None, num_cpus: int | None, timeout_s: float = RAY_TIMEOUT_S) -> None:
        import ray

        outcome: list[BaseException | None] = []

        def connect() -> None:
            try:
                if address is None:
                    ray.init(
                        num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR
                    )
                else:
                    ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
                outcome.append(None)
            except BaseException as err:  # e.g. a version mismatch
                outcome.append(err)

        if address is None:
            connect()
        else:  # a port that accepts but is no Ray head: ray.init retries for minutes, so wait in a thread
            thread = threading.Thread(target=connect, name="ray-connect", daemon=True)
            thread.start()
            thread.join(timeout_s)
            if not outcome:
                raise InputError(
                    "--ray-address",
                    "ray_address",
                    f"{address} accepts connections but no Ray head answered within {timeout_s:g} s",
                    _FIX_ADDRESS,
                )
        if outcome[0] is not None:
            err = outcome[0]
            ray.shutdown()
            where = "--ray-address" if address else "--backend"
            text = " ".join(str(err).split())[:200] or type(err).__name__
            fix = (
                "check that the cluster runs this Ray version and, if it uses token authentication, set "
                "RAY_AUTH_MODE=token with its token in ~/.ray/auth_token (or RAY_AUTH_TOKEN); or drop --ray-address"
                if address
                else "use --backend serial"
            )
            raise InputError(where, "ray", f"Ray did not start ({text})", fix) from None
        self._ray = ray
        cpus = int(ray.cluster_resources().get("CPU", 0))
        self.description = f"ray ({'cluster at ' + address if address else 'local'}, {cpus} CPUs)"

    def map(self, fn: Callable[[T], Any], items: list[T]) -> Iterator[tuple[T, Any]]:
        """Submit every task, then yield each as it finishes (a failed task yields its exception)."""
        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        pending = {remote.remote(item): item for item in items}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                item = pending.pop(ref)
                try:
                    yield item, ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    cause = err.as_instanceof_cause()
                    yield item, cause if isinstance(cause, Exception) else err
                except ray.exceptions.RayError as err:
                    yield item, err

    def close(self) -> None:
        """Disconnect (and stop a local instance)."""
        self._ray.shutdown()


def make_backend(
    name: BackendName | None, address: str | None, num_cpus: int | None, timeout_s: float = RAY_TIMEOUT_S
) -> Backend:
    """The backend a sweep asked for; by default Ray when it is installed, else serial.

    Ray runs on the cluster at ``address`` (default: ``$RAY_ADDRESS`` when set), else on a new local
    instance (never on a cluster that ``ray start`` left on this machine unless it is named).

    Raises:
        InputError: ``--ray-address`` with the serial backend, Ray asked for but not installed, an
            unreachable ``--ray-address``, a ``--num-cpus`` below 1.
    """
    if num_cpus is not None and num_cpus < 1:
        raise InputError("--num-cpus", "num_cpus", f"must be at least 1, got {num_cpus}", "e.g. --num-cpus 2")
    if name is None:
        name = "ray" if (address is not None or ray_installed()) else "serial"
    if name == "serial":
        if address is not None:
            raise InputError("--ray-address", "ray_address", "given with --backend serial", "drop one of them")
        return SerialBackend()
    address = address or os.environ.get("RAY_ADDRESS") or None  # Ray's own convention for the cluster to use
    if address is not None:
        check_reachable(address)  # before importing Ray: its own connect retries for minutes
    if not ray_installed():
        raise InputError(
            "--backend", "backend", "Ray is not installed", "pip install 'greenrl[sweep]', or use --backend serial"
        )
    if not timeout_s > 0:
        raise InputError("--ray-timeout", "ray_timeout", f"must be > 0, got {timeout_s}", "e.g. 30")
    return RayBackend(address, num_cpus, timeout_s)
