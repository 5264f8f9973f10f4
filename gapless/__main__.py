"""``python -m gapless``: the command line."""

from .cli import main

raise SystemExit(main())
