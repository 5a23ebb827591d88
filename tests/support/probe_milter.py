"""A recording milter for finding out what an MTA tells a milter (run as its own process).

``python -m tests.support.probe_milter SOCKET RECORD`` appends one JSON line per callback to RECORD: the
connect macros (``v``, ``j``, ``{daemon_name}``, ``_``), the envrcpt argument as given with its
``{rcpt_addr}``, ``{rcpt_host}`` and ``{rcpt_mailer}``, and at end of message what it deleted. A message
names the recipients to delete in ``X-Probe-Delete`` header fields (one spelling each, sent to
``smfi_delrcpt`` verbatim), so a test finds out which spelling an MTA's delete-recipient matches by what
the sink then receives. It judges nothing and accepts everything else.
"""

from __future__ import annotations

import json
import sys
import threading

import Milter

CONNECT_MACROS = ("v", "j", "{daemon_name}", "_", "{if_addr}")
RCPT_MACROS = ("{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}", "i")
MAIL_MACROS = ("{mail_addr}", "{mail_host}", "{mail_mailer}", "i")


class Probe(Milter.Base):
    record_path = ""
    _lock = threading.Lock()

    def __init__(self) -> None:
        super().__init__()
        self.deletes: list[str] = []
        self.rcpts: list[str] = []

    def _macros(self, names: tuple[str, ...]) -> dict[str, str | None]:
        return {name: self.getsymval(name) for name in names}

    def _write(self, **entry: object) -> None:
        line = json.dumps(entry, ensure_ascii=False)
        with self._lock, open(self.record_path, "a", encoding="utf-8") as out:
            out.write(line + "\n")

    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        self._write(step="connect", hostname=hostname, macros=self._macros(CONNECT_MACROS))
        return Milter.CONTINUE

    def envfrom(self, mailfrom: str, *params: str) -> int:
        self.deletes = []
        self.rcpts = []
        self._write(step="mail", arg=mailfrom, macros=self._macros(MAIL_MACROS))
        return Milter.CONTINUE

    def envrcpt(self, to: str, *params: str) -> int:
        self.rcpts.append(to)
        self._write(step="rcpt", arg=to, params=list(params), macros=self._macros(RCPT_MACROS))
        return Milter.CONTINUE

    def header(self, name: str, value: str) -> int:
        if name.lower() == "x-probe-delete":
            self.deletes.append(value.strip())
        return Milter.CONTINUE

    def eom(self) -> int:
        for spelling in self.deletes:
            self.delrcpt(spelling)
        self._write(step="eom", queue_id=self.getsymval("i"), rcpts=self.rcpts, deleted=self.deletes)
        return Milter.ACCEPT


def main(argv: list[str]) -> int:
    socket, Probe.record_path = argv
    Milter.factory = Probe
    Milter.set_flags(Milter.DELRCPT | Milter.ADDRCPT)
    Milter.runmilter("probe", socket, 30)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
