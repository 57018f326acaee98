"""``python -m nba_service.cli``: the same as the ``nba`` command."""

import sys

from nba_service.cli import main

sys.exit(main())
