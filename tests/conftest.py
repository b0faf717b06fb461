from __future__ import annotations

from collections.abc import Iterator

import pytest

from greenrl.live.launcher import ServerLauncher
from greenrl.surrogate import Surrogate


@pytest.fixture(scope="session")
def surrogate() -> Surrogate:
    return Surrogate()


@pytest.fixture(scope="module")
def twin(request: pytest.FixtureRequest) -> Iterator[str]:
    """A twin of the tiny scenario at the test module's ``TIME_SCALE``, started and stopped (by its process
    group) with the project's launcher. Modules that need another twin define their own ``twin``."""
    scale = float(request.module.TIME_SCALE)
    command = f"{{python}} -m greenrl.twin --port {{port}} --scenario tiny --time-scale {scale:g} --tick-ms 5"
    launcher = ServerLauncher(command + " --log-level WARNING", port=0, health_timeout_s=30.0)
    launcher.start({})
    try:
        yield launcher.url
    finally:
        launcher.close()
