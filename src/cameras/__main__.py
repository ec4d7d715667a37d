"""``python -m cameras`` is the ``cameras`` command."""

import sys

from .cli import main

sys.exit(main())
