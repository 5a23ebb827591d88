"""The do-nothing pymilter milter: the floor any Python milter pays, against which amzguard is measured.

Kept honest on purpose: it is what a naive pymilter milter with amzguard's callbacks looks like. It
defines every callback amzguard defines (connect, envfrom, envrcpt, data, header, eom, abort, close),
each returning CONTINUE, and uses pymilter's default negotiation and ``Milter.runmilter``:

- steps whose callback it does not define (HELO, end of headers, body, unknown command) are negotiated
  away, because pymilter does that by itself for callbacks left at their ``@nocallback`` defaults;
- every defined step expects a reply (no ``@Milter.noreply``), so Postfix waits for an answer at
  connect, MAIL, RCPT, DATA, each header and end of message;
- it asks for no particular macros (Postfix sends its default macro sets) and keeps every action flag
  that pymilter enables by default.

Run: ``python -m bench.noop_milter unix:/path/to.sock`` or ``inet:PORT@127.0.0.1`` (libmilter syntax).
"""

from __future__ import annotations

import os
import sys

import Milter


class NoopMilter(Milter.Base):
    """Accepts everything; one instance per MTA connection, like amzguard's."""

    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        return Milter.CONTINUE

    def envfrom(self, mailfrom: str, *params: str) -> int:
        return Milter.CONTINUE

    def envrcpt(self, to: str, *params: str) -> int:
        return Milter.CONTINUE

    def data(self) -> int:
        return Milter.CONTINUE

    def header(self, name: str, value: str) -> int:
        return Milter.CONTINUE

    def eom(self) -> int:
        return Milter.CONTINUE

    def abort(self) -> int:
        return Milter.CONTINUE

    def close(self) -> int:
        return Milter.CONTINUE


def negotiated_steps() -> str:
    """What this milter negotiates, in words, for the benchmark report."""
    return (
        "no-op pymilter: callbacks connect, envfrom, envrcpt, data, header, eom, abort, close, each "
        "returning CONTINUE and each awaited by Postfix (no no-reply flags); HELO, end-of-headers, body and "
        "unknown negotiated away by pymilter's defaults; default macros; Milter.runmilter"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.noop_milter SOCKET", file=sys.stderr)
        return 2
    # A unix socket must be connectable by Postfix's processes: the benchmark starts us with group postfix.
    os.umask(0o007)
    Milter.factory = NoopMilter
    print(f"noop milter listening on {argv[0]}", file=sys.stderr, flush=True)
    Milter.runmilter("noop", argv[0], timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
