"""``python -m greenrl.twin``: see ``greenrl.twin.cli``."""

from greenrl.twin.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
