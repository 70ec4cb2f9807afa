"""``python -m importers convert SOURCE... OUTPUT``: see :mod:`importers.convert`."""

import sys

from importers.convert import main

COMMANDS = {"convert": main}

if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    print(
        "usage: python -m importers convert SOURCE... OUTPUT [--overwrite] "
        "[--report PATH]",
        file=sys.stderr,
    )
    sys.exit(2)
sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
