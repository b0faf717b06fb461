"""The characterization grid: the length classes, the default sweep and ``SweepSpec``."""

from __future__ import annotations

from dataclasses import dataclass

LENGTH_CLASSES: dict[str, tuple[int, int]] = {"short": (256, 64), "medium": (1024, 256), "long": (4096, 1024)}
"""Length class -> (input tokens, output tokens); inputs and outputs are crossed independently."""
DEFAULT_CLOCKS_MHZ = (1005, 1200, 1395, 1605, 1800, 1980)
"""SM clocks swept by default (MHz), all on the H100 grid (345-1980 MHz in 15 MHz steps)."""
DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""max_num_seqs values of the full grid."""
DEFAULT_TPS = (2, 4, 8)
# The default (reduced) grid: every TP, clock and batch; one input class crossed with every output class.
_DEFAULT_INPUTS = ("medium",)
_DEFAULT_OUTPUTS = ("short", "medium", "long")


@dataclass(frozen=True, slots=True)
class SweepSpec:
    """What to sweep and how to load the node.

    Attributes:
        model, gpu, gpus: what is served on what (the study: Llama-2-70B on 8 x H100).
        tps: tensor-parallel degrees; one replica each.
        clocks_mhz: SM clocks (MHz), on the GPU's grid.
        batches: max_num_seqs values (running sequences).
        inputs, outputs: length-class names (keys of ``LENGTH_CLASSES``), crossed.
        load_rps: ``None`` for the saturating load, else the Poisson arrival rate (requests/s).
        tbt_slo_s: SLO on each request's mean time between tokens (s).
        generations: saturating load: batches' worth of requests measured after one warm-up batch.
        warmup_s, measure_s: Poisson load: warm-up and measured window (s).
        seed: seed of the Poisson arrivals and of ``SimNode.reset``.
    """

    model: str = "llama-2-70b"
    gpu: str = "h100-sxm-80gb"
    gpus: int = 8
    tps: tuple[int, ...] = DEFAULT_TPS
    clocks_mhz: tuple[int, ...] = DEFAULT_CLOCKS_MHZ
    batches: tuple[int, ...] = DEFAULT_BATCHES
    inputs: tuple[str, ...] = _DEFAULT_INPUTS
    outputs: tuple[str, ...] = _DEFAULT_OUTPUTS
    load_rps: float | None = None
    tbt_slo_s: float = 0.1
    generations: int = 3
    warmup_s: float = 60.0
    measure_s: float = 300.0
    seed: int = 0

    @property
    def points(self) -> int:
        """Number of grid points."""
        return len(self.tps) * len(self.clocks_mhz) * len(self.batches) * len(self.inputs) * len(self.outputs)
