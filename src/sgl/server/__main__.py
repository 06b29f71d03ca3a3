"""``python -m sgl.server [--port N] ...``: the same as ``sgl serve``."""

import sys

from sgl.server.main import main

sys.exit(main())
