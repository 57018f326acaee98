"""``python -m nba_service.bench echo ...``: the echo server of the benchmark."""

import sys

from nba_service.bench.echo import main

sys.exit(main())
