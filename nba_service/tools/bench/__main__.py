"""``python -m nba_service.tools.bench echo ...``: the echo server of the benchmark."""

import sys

from nba_service.tools.bench.echo import main

sys.exit(main())
