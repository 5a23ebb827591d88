"""What the store's command-line tools (``optout``, ``store``, ``restriction``) share: their exit statuses,
which amzguard(8) documents and Postfix's pipe(8) reads (``optout learn``), and how they print a time.

The values are sysexits(3)'s, so a pipe transport tempfails (75) instead of bouncing when the store is down;
each command's own meaning of status 1 stays in its module (``optout``: entries skipped; ``store status``:
a schema the milter would not use).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

EX_OK = os.EX_OK
EX_USAGE = 2
"""A bad argument, as argparse itself answers one (not sysexits' 64: the commands keep argparse's)."""
EX_DATAERR = os.EX_DATAERR
EX_TEMPFAIL = os.EX_TEMPFAIL


def utc_time(timestamp: int) -> str:
    """A unix time as the commands print it: UTC, ISO 8601, to the second (``2026-12-05T15:10:52Z``)."""
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
