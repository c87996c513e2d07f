"""``python -m yurt``: same entry point as the ``yurt`` console script."""

import sys

from yurt.cli import main

sys.exit(main())
