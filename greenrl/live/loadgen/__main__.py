"""``python -m greenrl.live.loadgen``: see ``greenrl.live.loadgen.cli``."""

from greenrl.live.loadgen.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
