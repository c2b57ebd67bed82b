"""``python -m medlossy``: the same as the ``medlossy`` command."""

import sys

from medlossy.cli.entry import main

sys.exit(main())
