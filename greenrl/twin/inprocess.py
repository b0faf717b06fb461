"""A twin served from this process, on its own event-loop thread: for notebooks, tests and embedding.

``serving_in_thread(server)`` starts a ``TwinServer`` on a fresh asyncio loop in a daemon thread, yields it
once it listens (``server.port`` is then the bound port), and on exit closes it, stops the loop and joins
the thread, so nothing keeps running after the ``with`` block, even when the block raises.

Example::

    sim = LiveSim.from_scenario("tiny", capacity=16)
    with serving_in_thread(TwinServer(sim, model_name="m", port=0)) as server:
        url = f"http://127.0.0.1:{server.port}"

Public names: serving_in_thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from greenrl.twin.server import TwinServer

__all__ = ["serving_in_thread"]


@contextlib.contextmanager
def serving_in_thread(server: TwinServer, start_timeout_s: float = 60.0) -> Iterator[TwinServer]:
    """Serve ``server`` on a loop thread for the ``with`` block; closed, stopped and joined after it.

    Raises:
        TimeoutError: the server did not listen within ``start_timeout_s`` (a loaded 2-core machine has
            taken 12 s).
    """
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="twin-server", daemon=True)
    thread.start()
    try:
        if not ready.wait(start_timeout_s):
            raise TimeoutError(f"the twin did not listen within {start_timeout_s:g} s")
        yield server
    finally:
        if ready.is_set():
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        if not thread.is_alive():
            loop.close()
