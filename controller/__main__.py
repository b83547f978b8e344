"""``python -m controller``: the ``parcel-sorter`` command line."""

from __future__ import annotations

import sys

from controller.app.cli import main

sys.exit(main())
