"""``python -m recording FILE``: record raw Coinbase level-2 frames until Ctrl-C.

``python -m recording convert SOURCE... OUTPUT``: other tools' files to a recording,
which is :mod:`importers.convert`'s command. This entry point is the one place of
``recording/`` that names :mod:`importers`: a ``__main__`` module is run, never imported,
so the import adds no cycle (importers imports recording's modules, and nothing imports
this one); the modules of ``recording/`` themselves never import ``importers``.
"""

import sys

if sys.argv[1:2] == ["convert"]:
    from importers.convert import main as convert

    sys.exit(convert(sys.argv[2:], prog="python -m recording convert"))

from recording.recorder import main

sys.exit(main())
