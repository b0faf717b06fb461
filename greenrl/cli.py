"""The ``greenrl`` command: one entry point for every tool, each also runnable as ``python -m greenrl.<tool>``.

``greenrl <command> --help`` shows a command's own flags; the command's module is imported only when
it runs, so ``greenrl predict`` never pays for torch and ``greenrl control`` never for the simulator.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("greenrl.train", "train a PPO controller on a scenario"),
    "evaluate": ("greenrl.evaluate", "rank controllers and baselines on held-out load"),
    "sweep": ("greenrl.sweep", "train and evaluate seeds x SLO weights x scenarios, serially or on Ray"),
    "fit": ("greenrl.fit", "refit the surrogate and print its cross-validation report"),
    "predict": ("greenrl.predict", "latency, power and energy of one configuration"),
    "characterize": ("greenrl.characterize", "sweep the simulated node like the characterization study"),
    "twin": ("greenrl.twin", "serve a vLLM-protocol twin backed by the simulator"),
    "control": ("greenrl.controller", "drive a vLLM node (or a twin) with an exported controller"),
    "loadgen": ("greenrl.live.loadgen", "replay a trace against an OpenAI-compatible server"),
    "profile": ("greenrl.live.profile", "sweep a running vLLM node (or a twin) into a measurement CSV for fit --data"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "usage: greenrl <command> [flags]   (greenrl <command> --help for its flags)\n\ncommands:\n" + "\n".join(
        lines
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``greenrl <command> [flags]``; returns the command's exit code (2 for an unknown command)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from greenrl import __version__

        print(f"greenrl {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"greenrl: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
