"""``python -m sgl ...``: the ``sgl`` command (``sgl run``, ``sgl serve``, ...) without its script."""

from sgl.cli import main

raise SystemExit(main())
