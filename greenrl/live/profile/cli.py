"""``greenrl profile``: sweep a running server over a grid and write the measurement CSV ``greenrl fit --data`` reads.

Without ``--gpus`` the server is a twin (``python -m greenrl.twin ... --allow-control``): its knobs, clock and
energy come through ``TwinBackend``. With ``--gpus`` it is a real vLLM node: an admission proxy started here in
front of ``--url`` holds the batch cap, NVML gives the energy counters and locks the SM clocks (``GpuBackend``).

Public names: main.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import httpx

from greenrl.catalog.gpus import GpuSpec, load_gpu
from greenrl.catalog.models import load_model
from greenrl.core import KnobBackend, Knobs
from greenrl.errors import InputError, exit_on_input_error
from greenrl.live.backends import BackendError, GpuBackend, TwinBackend
from greenrl.live.gpu import GpuError
from greenrl.live.metrics import MetricsError, scrape
from greenrl.live.profile.grid import GridPoint, PointResult, grid, measurement_rows, parse_ints, write_csv
from greenrl.live.profile.measure import MeasureError, measure_point

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="greenrl profile", description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="the server's base URL (a twin, or vLLM itself; not a proxy)")
    p.add_argument("--out", type=Path, required=True, help="measurement CSV to write (docs/surrogate.md schema)")
    p.add_argument("--gpu", required=True, help="GPU name of the catalog (h100-sxm-80gb, a100-80gb, ...)")
    p.add_argument("--model", default=None, help="model name of the catalog, or a config.json (default: served name)")
    p.add_argument("--batch", default="1,4,16,64", help="running sequences per replica, the cap (default 1,4,16,64)")
    p.add_argument("--input-tokens", default="256,1024", help="prompt tokens per request (default 256,1024)")
    p.add_argument("--output-tokens", default="128,512", help="output tokens per request (default 128,512)")
    p.add_argument(
        "--sm-clock-mhz",
        default="",
        help="SM clocks to lock, e.g. 1980,1410 (default: leave the clock); rows at another clock than the GPU's "
        "top one go to --clock-out, not --out",
    )
    p.add_argument("--clock-out", type=Path, default=None, help="CSV for the other clocks' rows (<out>.clocks.csv)")
    p.add_argument("--warmup-s", type=float, default=10.0, help="server seconds before each window (default 10)")
    p.add_argument("--window-s", type=float, default=30.0, help="server seconds measured per point (default 30)")
    p.add_argument("--gpus", default=None, help="real node: NVML indices of the server's GPUs (0,1) or 'fake'")
    p.add_argument("--tp", type=int, default=None, help="real node: the server's TP degree (default: all --gpus)")
    p.add_argument("--replicas", type=int, default=1, help="real node: the server's replicas (default 1)")
    p.add_argument("--timeout-s", type=float, default=300.0, help="longest wait of any one step, wall s (300)")
    p.add_argument("--seed", type=int, default=0, help="seeds the prompt token ids (0)")
    return p


def _reachable(url: str, timeout_s: float) -> str:
    """The served model's name; an unreachable or non-OpenAI server is an input error naming ``--url``."""
    if not url.startswith(("http://", "https://")):
        raise InputError("--url", "url", f"{url!r} is not an http(s) URL", "pass e.g. --url http://127.0.0.1:8000")
    try:
        resp = httpx.get(f"{url}/v1/models", timeout=min(timeout_s, 5.0), trust_env=False)
        resp.raise_for_status()
        return str(resp.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as err:
        raise InputError(
            "--url",
            "url",
            f"{url} does not answer GET /v1/models ({type(err).__name__})",
            "start vLLM or `python -m greenrl.twin --allow-control`, or fix --url",
        ) from None


def _clocks(text: str, spec: GpuSpec) -> list[int | None]:
    if not text.strip():
        return [None]
    return [spec.check_clock(c, "--sm-clock-mhz") for c in parse_ints(text, "--sm-clock-mhz")]


def _twin(url: str) -> tuple[TwinBackend, Knobs]:
    backend = TwinBackend(url)
    try:
        reading = backend.read()
    except BackendError:
        backend.close()
        raise InputError(
            "--url", "url", f"{url} is not a greenrl twin", "pass --gpus for a real vLLM node, or fix --url"
        ) from None
    assert reading.knobs is not None
    if reading.knobs.tp * reading.knobs.replicas != len(reading.energy_per_gpu_j):
        backend.close()
        raise InputError(
            "--url",
            "knobs",
            f"the twin runs {reading.knobs.replicas} x TP{reading.knobs.tp} on {len(reading.energy_per_gpu_j)} GPUs",
            "start it with --tp and --replicas that use every GPU (idle GPUs would count in the power)",
        )
    return backend, reading.knobs


def _real(args: argparse.Namespace, spec: GpuSpec, batches: list[int]) -> tuple[GpuBackend, Knobs, str]:
    from greenrl.live.gpu import open_gpus  # NVML is imported only when an NvmlGpu opens
    from greenrl.live.proxy import AdmissionProxy

    kind = "fake" if args.gpus.strip() == "fake" else "nvml"
    indices = None if kind == "fake" else parse_ints(args.gpus, "--gpus", minimum=0)
    try:
        gpus = open_gpus(indices, kind)  # type: ignore[arg-type]
    except GpuError as err:
        raise InputError("--gpus", "gpus", f"GPU {err.index}: {err.problem}", err.fix) from None
    tp = args.tp or len(gpus)
    if tp < 1 or args.replicas < 1 or tp * args.replicas != len(gpus):
        gpus.close()
        raise InputError(
            "--tp",
            "tp",
            f"{args.replicas} x TP{tp} does not use the {len(gpus)} GPUs of --gpus",
            "list the server's GPUs",
        )
    supported = set(gpus[0].supported_sm_clocks_mhz())
    for clock in _clocks(args.sm_clock_mhz, spec):
        if clock is not None and supported and clock not in supported:
            gpus.close()
            raise InputError(
                "--sm-clock-mhz",
                "sm_clock_mhz",
                f"GPU {gpus[0].index} does not support {clock} MHz",
                "pick from nvidia-smi -q -d SUPPORTED_CLOCKS",
            )
    proxy = AdmissionProxy(args.url, cap=max(batches) * args.replicas)
    base = Knobs(tp=tp, replicas=args.replicas, max_num_seqs=max(batches), sm_clock_mhz=spec.max_sm_clock_mhz)
    backend = GpuBackend(gpus, base, proxy=proxy, owns_proxy=True, proxy_hint="")
    return backend, base, proxy.start()


def _sweep(
    args: argparse.Namespace, points: list[GridPoint], backend: KnobBackend, base: Knobs, load_url: str, model: str
) -> list[PointResult]:
    metrics_url = f"{args.url}/metrics"
    results = []
    for n, point in enumerate(points, start=1):
        started = time.monotonic()
        result = measure_point(
            backend,
            lambda: scrape(metrics_url),
            load_url,
            point,
            base,
            warmup_s=args.warmup_s,
            window_s=args.window_s,
            timeout_s=args.timeout_s,
            model=model,
            seed=args.seed + n,
        )
        results.append(result)
        print(
            f"[{n}/{len(points)}] cap {point.batch} clock {point.sm_clock_mhz or '-'} in {point.input_tokens} "
            f"out {point.output_tokens}: batch {result.mean_running:.2f}, {result.output_tokens_per_s:.0f} tok/s, "
            f"{result.power_w:.0f} W, {result.energy_per_output_token_j:.4f} J/tok, "
            f"step {result.mixed_step_s * 1e3:.2f} ms ({time.monotonic() - started:.1f} s)",
            file=sys.stderr,
        )
    return results


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Profile the server over the grid, write the CSV(s); 0 on success, 2 on bad input, 1 if a point fails."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.url = args.url.rstrip("/")
    for flag, value, least in (
        ("--warmup-s", args.warmup_s, 0.0),
        ("--window-s", args.window_s, 1e-9),
        ("--timeout-s", args.timeout_s, 1e-9),
    ):
        if not (math.isfinite(value) and value >= least):
            raise InputError(
                flag, flag[2:].replace("-", "_"), f"must be a positive number, got {value}", f"pass e.g. {flag} 10"
            )
    spec = load_gpu(args.gpu)
    batches = parse_ints(args.batch, "--batch")
    points = grid(
        batches,
        _clocks(args.sm_clock_mhz, spec),
        parse_ints(args.input_tokens, "--input-tokens"),
        parse_ints(args.output_tokens, "--output-tokens"),
    )
    served = _reachable(args.url, args.timeout_s)
    model = args.model or served
    load_model(model, where="--model")  # a served name outside the catalog needs --model
    backend: KnobBackend
    if args.gpus is None:
        backend, base = _twin(args.url)
        load_url = args.url
    else:
        backend, base, load_url = _real(args, spec, batches)
    try:
        results = _sweep(args, points, backend, base, load_url, served)
    except BackendError as err:
        if err.unreachable:
            raise InputError("--url", "url", str(err), "check the server is up") from None
        raise InputError(
            "--url", "knobs", f"the server refused a knob ({err})", "start the twin with --allow-control"
        ) from None
    except (MeasureError, MetricsError, GpuError) as err:  # the node, not the flags: nothing is written
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        backend.close({"max_num_seqs": base.max_num_seqs, "sm_clock_mhz": base.sm_clock_mhz})
    top = [r for r in results if r.point.sm_clock_mhz in (None, spec.max_sm_clock_mhz)]
    other = [r for r in results if r not in top]
    source = f"greenrl profile ({'twin' if args.gpus is None else 'nvml'})"
    write_csv(args.out, measurement_rows(top, model=model, gpu=spec.name, tp=base.tp, source=source), with_clock=False)
    print(f"wrote {args.out}: {len(top)} points", file=sys.stderr)
    if other:
        clock_out = args.clock_out or args.out.with_suffix(".clocks.csv")
        rows = measurement_rows(other, model=model, gpu=spec.name, tp=base.tp, source=source)
        write_csv(clock_out, rows, with_clock=True)
        print(f"wrote {clock_out}: {len(other)} points below the top clock (not for the fit)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
