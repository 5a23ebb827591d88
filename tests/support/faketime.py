"""The milter under Debian's libfaketime, with a clock the test moves (no sleeping until midnight).

libfaketime (package ``libfaketime``, pulled in by ``faketime``) is preloaded into ``amzguard run``;
``FAKETIME_TIMESTAMP_FILE`` names a file holding the offset (``+86400``: one day ahead) and
``FAKETIME_NO_CACHE=1`` makes it read that file at every clock call, so a write takes effect at the
next message. The ``faketime`` command itself is not used: it sets ``FAKETIME``, which wins over the
file. Only the wall clock moves (``FAKETIME_DONT_FAKE_MONOTONIC``): libmilter's and Python's timeouts
keep real time. The MT build is the one for threaded programs (libmilter runs a thread per connection).
"""

from __future__ import annotations

import glob
import time
from pathlib import Path
from typing import Any

from .milter_process import MilterProcess


def libfaketime() -> str:
    """The preload library (Debian: /usr/lib/<triplet>/faketime/libfaketimeMT.so.1)."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        raise RuntimeError("libfaketime is not installed (apt install faketime; make test installs it)")
    return found[0]


class FakeTimeMilter(MilterProcess):
    """``amzguard run`` whose wall clock is real time plus ``offset`` seconds (``advance``)."""

    def __init__(self, config: Path, socket: str, log: Path, **kwargs: Any) -> None:
        super().__init__(config, socket, log, **kwargs)
        self.clock_file = config.parent / "faketime-offset"
        self.offset = 0
        self._write()
        self.env = {**self.env, "LD_PRELOAD": libfaketime(), "FAKETIME_TIMESTAMP_FILE": str(self.clock_file),
                    "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}  # fmt: skip

    def _write(self) -> None:
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(f"{self.offset:+d}\n")
        tmp.chmod(0o644)
        tmp.replace(self.clock_file)  # atomic: the milter never reads half a file

    def advance(self, seconds: int) -> None:
        self.offset += seconds
        self._write()

    def set_time(self, unix_time: float) -> None:
        """From now on the milter's clock reads ``unix_time`` (and runs on at real speed)."""
        self.offset = int(unix_time - time.time())
        self._write()
