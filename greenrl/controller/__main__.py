"""``python -m greenrl.controller``: run the serving controller (see ``greenrl.controller.wiring``)."""

from greenrl.controller.wiring import main

if __name__ == "__main__":
    raise SystemExit(main())
