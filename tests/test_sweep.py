"""Sweeps: a serial grid on tiny, resume, Ray-local vs serial identity, and bad input (one line, exit 2)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from greenrl import cli
from greenrl import sweep as sweep_cli
from greenrl.errors import InputError
from greenrl.sweep import finished_run, parse_grid, parse_seeds, run_sweep
from greenrl.sweep_backend import SerialBackend, ray_installed

STEPS = 512  # one PPO update on tiny (8 envs x 64 steps): enough to move the weights


@pytest.fixture(scope="module")
def serial_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    assert sweep_cli.main(["--scenarios", "tiny", "--seeds", "0-1", "--slo-weights", "50"] + _flags(out)) == 0
    return out


def _flags(out: Path) -> list[str]:
    return [
        "--total-timesteps",
        str(STEPS),
        "--backend",
        "serial",
        "--evaluate",
        "--eval-seeds",
        "1",
        "--out",
        str(out),
    ]


def test_seed_ranges() -> None:
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("3,1,1-2") == [3, 1, 2]
    for bad in ("", "a", "4-2", "1,,2", "-1"):
        with pytest.raises(InputError, match="--seeds"):
            parse_seeds(bad)


def test_serial_grid_trains_each_cell_like_greenrl_train(serial_sweep: Path) -> None:
    runs = sorted((serial_sweep / "tiny").iterdir())
    assert [r.name.rsplit("_", 1)[0] for r in runs] == ["maskable_ppo_w50_s0", "maskable_ppo_w50_s1"]
    for seed, run in enumerate(runs):
        command = (run / "command.txt").read_text()
        assert "-m greenrl.train --scenario tiny --agent maskable_ppo" in command
        assert f"--seed {seed} --slo-weight 50 --total-timesteps {STEPS} --torch-threads 1" in command
        assert json.loads((run / "versions.json").read_text())["torch_threads"] == "1"
        assert (run / "summary.json").is_file() and (run / "train.log").is_file()
        assert json.loads((run / "sweep_eval.json").read_text())["eval_seeds"] == 1
    hashes = {json.loads((r / "controller" / "controller.json").read_text())["policy"]["sha256"] for r in runs}
    assert len(hashes) == 2  # two seeds, two policies


def test_a_cell_is_what_its_recorded_greenrl_train_command_gives(serial_sweep: Path, tmp_path: Path) -> None:
    import shlex
    import subprocess

    cell = sorted((serial_sweep / "tiny").iterdir())[1]
    argv = shlex.split((cell / "command.txt").read_text())
    argv[argv.index("--out") + 1] = str(tmp_path)
    subprocess.run(argv, check=True, capture_output=True, timeout=300)  # a fresh process, as a user runs it
    (again,) = (tmp_path / "tiny").iterdir()
    assert (again / "controller" / "policy.npz").read_bytes() == (cell / "controller" / "policy.npz").read_bytes()
    kpis = [json.loads((r / "summary.json").read_text()) for r in (cell, again)]
    assert kpis[0]["eval_trained"] == kpis[1]["eval_trained"]
    assert kpis[0]["energy_saving_vs_static_max"] == kpis[1]["energy_saving_vs_static_max"]


def test_report_has_mean_and_t_interval_over_seeds(serial_sweep: Path) -> None:
    report = json.loads((serial_sweep / "report.json").read_text())
    assert "Student t" in report["meta"]["ci"] and report["meta"]["torch_threads_per_task"] == 1
    rows = {(r["source"], r["policy"]): r for r in report["rows"] + report["baselines"]}
    train, evaluated = rows[("train", "trained")], rows[("evaluate", "trained")]
    assert train["n"] == 2 and train["seeds"] == [0, 1] and train["slo_weight"] == 50
    cells = report["cells"]
    saving = [c["train"]["saving_vs_static_max"] for c in cells]
    assert train["saving_vs_static_max"] == pytest.approx(sum(saving) / 2)
    spread = abs(saving[0] - saving[1]) / 2
    assert train["saving_vs_static_max_ci95"] == pytest.approx(12.706 * spread, rel=1e-3)  # t(0.975, 1) * sd / sqrt 2
    assert evaluated["n"] == 2 and ("evaluate", "static-max") in rows and ("evaluate", "planner") in rows
    with (serial_sweep / "report.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4 and table[0]["ci_over"] == "training seeds"
    assert not list(serial_sweep.rglob(".*.tmp"))


def test_a_finished_sweep_is_skipped_when_run_again(serial_sweep: Path) -> None:
    before = sorted((serial_sweep / "tiny").iterdir())
    said: list[str] = []
    grid = parse_grid("tiny", "0-1", "50", "maskable_ppo", STEPS, serial_sweep)
    report, failures = run_sweep(grid, SerialBackend(), evaluate=True, eval_seeds=1, say=said.append)
    assert not failures and sorted((serial_sweep / "tiny").iterdir()) == before
    assert sum(line.startswith("skip tiny w50") for line in said) == 2
    assert sum(line.startswith("skip evaluating") for line in said) == 3
    assert "training 0 of 2 cells" in "\n".join(said)
    assert [c["run"] for c in report["cells"]] == [str(r) for r in before]


def test_finished_run_ignores_other_timesteps_and_unfinished_folders(serial_sweep: Path, tmp_path: Path) -> None:
    grid = parse_grid("tiny", "0", "50", "maskable_ppo", STEPS + 1, serial_sweep)
    assert finished_run(grid.cells[0]) is None  # same seed, other length: not this cell
    (tmp_path / "tiny" / "maskable_ppo_w50_s0_20260101-000000").mkdir(parents=True)
    assert finished_run(parse_grid("tiny", "0", "50", "maskable_ppo", STEPS, tmp_path).cells[0]) is None


@pytest.mark.skipif(not ray_installed(), reason="ray is not installed (pip install 'greenrl[sweep]')")
def test_ray_local_gives_the_serial_results(serial_sweep: Path, tmp_path: Path) -> None:
    code = sweep_cli.main(
        ["--scenarios", "tiny", "--seeds", "0-1", "--slo-weights", "50", "--total-timesteps", str(STEPS)]
        + ["--backend", "ray", "--num-cpus", "2", "--evaluate", "--eval-seeds", "1", "--out", str(tmp_path)]
    )
    assert code == 0
    serial = json.loads((serial_sweep / "report.json").read_text())
    ray = json.loads((tmp_path / "report.json").read_text())
    assert "ray (local" in ray["meta"]["backend"]
    for a, b in zip(serial["cells"], ray["cells"], strict=True):
        assert a["policy_sha256"] == b["policy_sha256"]
        assert a["train"] == b["train"] and a["evaluate"] == b["evaluate"]  # exactly, not approximately
    assert serial["rows"] == ray["rows"]


@pytest.mark.skipif(not ray_installed(), reason="ray is not installed (pip install 'greenrl[sweep]')")
def test_a_two_node_ray_cluster_gives_the_serial_results(serial_sweep: Path, tmp_path: Path) -> None:
    """--ray-address on a cluster of two Ray nodes (Ray's own multi-node test cluster: a head and a worker raylet
    on this host, as two machines would run them): each node trains one cell, and the results are the serial ones.
    What only real machines add (another host's Python, network file paths) is outside this test."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        address = cluster.address
        code = sweep_cli.main(
            ["--scenarios", "tiny", "--seeds", "0-1", "--slo-weights", "50", "--total-timesteps", str(STEPS)]
            + ["--ray-address", address, "--evaluate", "--eval-seeds", "1", "--out", str(tmp_path)]
        )
    finally:
        cluster.shutdown()
    assert code == 0
    serial = json.loads((serial_sweep / "report.json").read_text())
    ray = json.loads((tmp_path / "report.json").read_text())
    assert f"cluster at {address}, 2 CPUs" in ray["meta"]["backend"]
    assert len({c["worker"]["ray_node_id"] for c in ray["cells"]}) == 2  # one cell per node: both trained
    assert all(c["worker"]["ray_node_id"] is None for c in serial["cells"])
    for a, b in zip(serial["cells"], ray["cells"], strict=True):
        assert a["policy_sha256"] == b["policy_sha256"]
        assert a["train"] == b["train"] and a["evaluate"] == b["evaluate"]
    assert serial["rows"] == ray["rows"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--scenarios", ""], "--scenarios"),
        (["--scenarios", "tiny,"], "empty item"),
        (["--seeds", "4-2"], "ends below its start"),
        (["--seeds", "0..4"], "not a seed or a range"),
        (["--scenarios", "nope"], "unknown scenario"),
        (["--slo-weights", "-1"], "--slo-weights"),
        (["--total-timesteps", "0"], "at least 1"),
        (["--backend", "serial", "--ray-address", "127.0.0.1:1"], "drop one of them"),
        (["--ray-address", "nowhere"], "not host:port"),
        (["--num-cpus", "0"], "--num-cpus"),
        (["--evaluate", "--baselines", "nope"], "unknown baseline"),
        (["--scenarios", "fleet-default", "--evaluate"], "already holds its held-out days"),
        (["--scenarios", "fleet-nope"], "fleet"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        sweep_cli.main([*argv, "--out", str(tmp_path / "out")])
    assert ended.value.code == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_fleet_is_a_sweep_scenario_with_its_agent_files_slo_weight(tmp_path: Path) -> None:
    from greenrl.agent_config import agent_config
    from greenrl.sweep_report import _default_slo_weight

    grid = parse_grid("fleet-default,tiny", "0-1", None, "maskable_ppo", None, tmp_path)
    assert grid.scenarios == ("fleet-default", "tiny") and len(grid.cells) == 4
    fleet_cell = grid.cells[0]
    assert fleet_cell.train_argv()[:2] == ["--scenario", "fleet-default"]
    assert _default_slo_weight(fleet_cell) == agent_config("maskable_ppo", "fleet-default")["slo_weight"]


def _fleet_run(folder: Path, saving: float, small_saving: float) -> Path:
    """A finished fleet run's files as the report reads them: summary.json and the controller's manifest."""
    (folder / "controller").mkdir(parents=True)
    (folder / "controller" / "controller.json").write_text(json.dumps({"policy": {"sha256": "0" * 64}}))

    def held_out(value: float) -> dict:  # type: ignore[type-arg]
        figures = {"energy_kwh": 1.0, "slo_attainment": 0.995, "missed": 1}
        return {"energy_saving_vs_static_max": value, "slo_attainment_delta": -0.001, "eval_trained": figures}

    summary = held_out(saving) | {"held_out_categories": {"language/m-small": held_out(small_saving)}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_a_fleet_report_has_a_row_for_each_held_out_category(tmp_path: Path) -> None:
    from greenrl.sweep_report import build_report

    grid = parse_grid("fleet-mixed", "0-1", None, "maskable_ppo", None, tmp_path)
    savings = {0: (0.40, 0.30), 1: (0.50, 0.34)}
    runs = {c: _fleet_run(tmp_path / f"s{c.seed}", *savings[c.seed]) for c in grid.cells}
    report = build_report(grid, runs, {})
    rows = {r["source"]: r for r in report["rows"]}
    assert set(rows) == {"train", "train language/m-small"}
    assert rows["train"]["saving_vs_static_max"] == pytest.approx(0.45)
    assert rows["train language/m-small"]["saving_vs_static_max"] == pytest.approx(0.32)
    assert rows["train language/m-small"]["n"] == 2 and "train <category>" in report["meta"]["sources"]


def test_unreachable_ray_address_fails_fast_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.perf_counter()
    with pytest.raises(SystemExit) as ended:
        cli.main(["sweep", "--scenarios", "tiny", "--ray-address", "127.0.0.1:1", "--out", str(tmp_path / "out")])
    assert ended.value.code == 2
    assert time.perf_counter() - started < 15  # ray.init alone retries for minutes
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ray-address" in err and "ray start --head" in err
    assert "drop --ray-address to run locally" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not ray_installed(), reason="ray is not installed (pip install 'greenrl[sweep]')")
def test_a_port_that_is_no_ray_head_fails_after_ray_timeout(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as server:  # accepts TCP connections (the kernel completes them) but speaks no Ray
        server.bind(("0.0.0.0", 0))  # Ray dials the node's own address, not 127.0.0.1
        server.listen(64)
        port = server.getsockname()[1]
        argv = [sys.executable, "-m", "greenrl.sweep", "--ray-address", f"127.0.0.1:{port}", "--ray-timeout", "3"]
        started = time.perf_counter()
        done = subprocess.run([*argv, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
        waited = time.perf_counter() - started
    assert done.returncode == 2 and waited < 60
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --ray-address") and "no Ray head answered within 3 s" in last
    assert not (tmp_path / "out").exists()
