"""Entry point of ``python -m greenrl.characterize`` (see ``greenrl.characterize.cli``)."""

from greenrl.characterize.cli import main

raise SystemExit(main())
