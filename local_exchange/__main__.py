"""``python -m local_exchange``: run the local Coinbase exchange until Ctrl-C."""

import sys

from local_exchange.cli import main

sys.exit(main())
