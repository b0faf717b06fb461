"""``python -m greenrl.live.profile``: see ``greenrl.live.profile.cli``."""

from greenrl.live.profile.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
