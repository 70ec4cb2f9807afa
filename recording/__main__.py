"""``python -m recording FILE``: record raw Coinbase level-2 frames until Ctrl-C."""

import sys

from recording.recorder import main

sys.exit(main())
