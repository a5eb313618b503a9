"""``python -m tlkit``: the same as the ``tlkit`` command."""

import sys

from .cli import main

sys.exit(main())
