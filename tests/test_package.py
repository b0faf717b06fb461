"""The package as a user installs and imports it: lazy registration, shipped files, the ``greenrl`` command."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import pytest

import greenrl
from greenrl import bundled, cli


def test_registered_scenarios_are_the_shipped_yamls() -> None:
    shipped = sorted(p.stem for p in bundled.scenarios_dir().glob("*.yaml"))
    assert sorted(bundled.SCENARIOS) == shipped, "update greenrl.bundled.SCENARIOS to the files in envs/"
    for name in shipped:
        spec = gym.spec(f"greenrl/{name}-v0")
        assert spec.entry_point == greenrl.ENTRY_POINT and spec.kwargs == {"scenario": name}


def test_import_greenrl_is_light_and_reads_no_file() -> None:
    code = (
        "import builtins, io, sys\n"
        "opened = []\n"
        "real = io.open\n"
        "def spy(file, *a, **k):\n"
        "    opened.append(str(file)); return real(file, *a, **k)\n"
        "builtins.open = io.open = spy\n"
        "import greenrl\n"
        "heavy = ('numba', 'pandas', 'torch', 'scipy', 'yaml', 'greenrl.env', 'greenrl.sim')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "import json; print(json.dumps({'heavy': heavy, 'opened': [f for f in opened if 'greenrl' in f]}))\n"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out == {"heavy": [], "opened": []}


def test_shipped_folders_hold_agents_and_controllers() -> None:
    assert (bundled.agents_dir() / "maskable_ppo.yaml").is_file()
    assert any(bundled.checkpoints_dir().glob("default/*/controller.json"))


def test_cli_lists_commands_and_rejects_unknown_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in cli.COMMANDS)
    assert cli.main(["serve-me"]) == 2
    assert "unknown command 'serve-me'" in capsys.readouterr().err


def test_cli_dispatches_to_the_module(capsys: pytest.CaptureFixture[str]) -> None:
    flags = [
        "--model",
        "llama-3.1-8b",
        "--gpu",
        "h100",
        "--tp",
        "1",
        "--batch",
        "8",
        "--input-tokens",
        "512",
        "--output-tokens",
        "64",
        "--json",
    ]
    assert cli.main(["predict", *flags]) == 0
    assert json.loads(capsys.readouterr().out)["tp"] == 1


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_a_main(command: str) -> None:
    import importlib

    module = importlib.import_module(cli.COMMANDS[command][0])
    assert callable(module.main)
