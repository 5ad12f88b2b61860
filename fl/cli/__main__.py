"""``python -m fl.cli``: the ``privagg`` command."""

import sys

from fl.cli.main import main

sys.exit(main())
