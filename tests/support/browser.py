"""Headless Chromium as the dashboard test and the README's screenshots launch it.

Debian's ``chromium`` (installed by ``.ci/run`` when missing), driven by Playwright with
``executable_path``; never ``playwright install``, which downloads a browser. The
flags keep it off the network and out of first-run work, in a fresh profile.
"""

from __future__ import annotations

import shutil

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
