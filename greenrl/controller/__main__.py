"""``python -m greenrl.controller``: run the serving controller (see ``greenrl.controller.wiring``)."""

from greenrl.controller.wiring import main

raise SystemExit(main())
