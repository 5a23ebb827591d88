"""Where amzguard's log lines go: standard error (the journal under systemd), one write per line.

Why not ``logging.StreamHandler``: it takes a lock and passes each record through Python's text and
buffer layers with a flush of its own. amzguard writes one decision line per recipient from libmilter's
connection threads, which all compete for the GIL; measured with ``bench/`` (Postfix, 10 sessions),
that cost about 0.06 ms of milter CPU per message, a tenth of all the milter's work. Here each record is
encoded once and written with a single ``os.write``. A write of up to ``PIPE_BUF`` bytes reaches a pipe,
socket or ``O_APPEND`` file whole, so such lines need no lock; longer records (tracebacks) take one so
that they are not interleaved with other threads' lines.
"""

from __future__ import annotations

import logging
import os
import select
import threading

LOG_FORMAT = "amzguard[%(process)d]: %(levelname)s: %(message)s"


class LineHandler(logging.Handler):
    """Writes each formatted record plus a newline to a file descriptor in one ``os.write``."""

    def __init__(self, fd: int = 2) -> None:
        super().__init__()
        self.fd = fd
        self._long_records = threading.Lock()

    def handle(self, record: logging.LogRecord) -> bool:
        # logging.Handler.handle would hold the handler lock around emit(); short lines do not need it.
        result = self.filter(record)
        if result:
            self.emit(result if isinstance(result, logging.LogRecord) else record)
        return bool(result)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            if len(data) <= select.PIPE_BUF:
                self._write_all(data)
            else:
                with self._long_records:
                    self._write_all(data)
        except Exception:
            self.handleError(record)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]


def configure_logging(level: str, fd: int = 2) -> None:
    """Send log records at ``level`` or above to ``fd`` (standard error by default).

    Like ``logging.basicConfig``, it leaves a root logger that already has handlers alone (an embedding
    program or a test harness decided where logs go).
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler = LineHandler(fd)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
