"""`python -m xds_server.cli ...` is `agentxds ...`."""

import sys

from xds_server.cli import main

sys.exit(main())
