from __future__ import annotations

import pytest

from greenrl.surrogate import Surrogate


@pytest.fixture(scope="session")
def surrogate() -> Surrogate:
    return Surrogate()
