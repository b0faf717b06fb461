"""Cost of surrogate predictions: one iteration (scalar path) and a vectorized batch, on one core.

Prints one JSON object. Run: ``.venv/bin/python benchmarks/bench_surrogate.py``.
"""

from __future__ import annotations

import json
import os
import platform

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the target says

import numpy as np
from _timing import best_s  # benchmarks/_timing.py: a script's folder is on sys.path

from greenrl.surrogate import StepBatch, Surrogate


def main() -> None:
    replica = Surrogate().replica("llama-2-70b", "h100", 4)
    one = StepBatch(512.0, 512.0 * 256, 64.0, 64.0 * 1500)
    n_scalar = 2000
    scalar_s = best_s(lambda: [replica.step(one, 1605.0) for _ in range(n_scalar)], 5) / n_scalar

    rng = np.random.default_rng(0)
    n = 1_000_000
    p = rng.uniform(0, 4096, n)
    d = rng.uniform(1, 256, n)
    batch = StepBatch(p, p * p / 2, d, d * rng.uniform(100, 8000, n))
    clock = rng.integers(345, 1981, n).astype(float)
    vector_s = best_s(lambda: replica.step(batch, clock), 3)
    print(
        json.dumps(
            {
                "benchmark": "surrogate",
                "scalar_prediction_us": round(scalar_s * 1e6, 2),
                "scalar_predictions_per_s": round(1 / scalar_s),
                "vector_batch_size": n,
                "vector_batch_s": round(vector_s, 4),
                "vector_predictions_per_s": round(n / vector_s),
                "target_vector_predictions_per_s": 1_000_000,
                "machine": platform.processor() or platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
