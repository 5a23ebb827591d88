"""``amzguard optout add|remove|list|import|export|learn``: the opt-out register from the command line.

Every command is idempotent and says what it did in counts, so it can run from cron, a shop's export job or
a Postfix ``pipe`` transport. Exit status: 0 done; 1 some input was skipped (named on stderr); 65
(EX_DATAERR) a file named on the command line could not be read; 75 (EX_TEMPFAIL) the config, the store or
the ``optout.learn.keep_unknown`` directory could not be used, which makes Postfix's pipe(8) keep the
notice and retry.

``learn`` never fails on a message it cannot learn from (no opt-out notice, or a notice naming no buyer
amzguard knows): as a pipe transport, a non-zero exit would make Postfix bounce that message to its sender,
and the sender of mail to the learn address is usually Amazon (backscatter). Such a message is logged
(``logging.target``: with ``syslog`` the line sits in mail.log beside the pipe's ``status=sent``), kept in
``optout.learn.keep_unknown`` if that is set, and accepted.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import TextIO

from .address import DOMAIN_NAME_RE, BuyerPatterns, buyer_key, is_shared_buyer, parse_address
from .config import Config
from .store import OptOut, Store, StoreError, open_store
from .optout_learn import LearnResult, Outcome, RestrictionNotices, learn, split_messages
from .orderid import ORDER_ID_RE
from .cli_common import EX_DATAERR, EX_OK, EX_TEMPFAIL, utc_time

log = logging.getLogger("amzguard.learn")

EX_SKIPPED = 1
"""Some entries were skipped (named on stderr): the rest was done."""

CSV_FIELDS = ("address", "order_id", "source", "added_at")
ADDRESS_COLUMNS = ("address", "buyer", "email", "e-mail")


def add_parser(commands: argparse._SubParsersAction, with_config: Callable[[argparse.ArgumentParser], object]) -> None:
    """Register ``optout`` and its subcommands on the main parser."""
    optout = commands.add_parser(
        "optout", help="manage the opt-out register (add, remove, list, import, export, learn)"
    )
    sub = optout.add_subparsers(dest="optout_command", required=True, metavar="SUBCOMMAND")
    add = sub.add_parser("add", help="register buyer addresses as opted out")
    add.add_argument("addresses", nargs="+", metavar="ADDRESS")
    add.add_argument("--order", metavar="ORDER_ID", help="the Amazon order id the opt-out came with")
    remove = sub.add_parser("remove", help="remove buyer addresses from the register")
    remove.add_argument("addresses", nargs="+", metavar="ADDRESS")
    sub.add_parser("list", help="print the registered addresses, one a line")
    imp = sub.add_parser("import", help="add the addresses of a CSV file or a one-address-per-line file ('-': stdin)")
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--format", choices=("auto", "csv", "lines"), default="auto")
    exp = sub.add_parser("export", help="write the register to stdout (CSV, or one address a line)")
    exp.add_argument("--format", choices=("csv", "lines"), default="csv")
    learn_parser = sub.add_parser(
        "learn", help="learn opt-outs from Amazon's notices: RFC 5322 messages or mbox files (stdin if none)"
    )
    learn_parser.add_argument("files", nargs="*", metavar="FILE")
    for parser in (add, remove, sub.choices["list"], imp, exp, learn_parser):
        with_config(parser)


@dataclass
class _Input:
    """Addresses read from the command line or a file, with what had to be skipped and why."""

    entries: list[OptOut]
    skipped: list[str]


def _read_addresses(items: Iterable[tuple[str, str, str | None]], patterns: BuyerPatterns, source: str,
                    registering: bool = True) -> _Input:  # fmt: skip
    """``items`` are (where, address, order id); where names the argument or line for error messages.
    ``registering``: the entries are to be added, so the shared Amazon Business address is skipped (it may
    still be removed, e.g. when an older version registered it)."""
    result = _Input(entries=[], skipped=[])
    for where, text, order_id in items:
        # Any mailbox is a possible key: a marked buyer (blacklisted-x@shop-domain) is registered as the
        # address without its marker, whatever its domain.
        address = parse_address(text.strip())
        key = buyer_key(address, patterns.marked_prefixes)
        if not key or not DOMAIN_NAME_RE.match(address.domain) or any(char.isspace() for char in key):
            result.skipped.append(f"{where}: {text.strip()!r} is not an e-mail address")
        elif registering and is_shared_buyer(key, patterns):
            result.skipped.append(f"{where}: {text.strip()!r} is the address Amazon Business buyers share; it is "
                                  "never registered as opted out")  # fmt: skip
        elif order_id and not ORDER_ID_RE.fullmatch(order_id.strip()):
            result.skipped.append(f"{where}: {order_id!r} is not an order id (NNN-NNNNNNN-NNNNNNN)")
        else:
            result.entries.append(OptOut(key, order_id=(order_id or "").strip() or None, source=source))
    return result


def _rows(stream: TextIO, fmt: str) -> Iterator[tuple[str, str, str | None]]:
    lines = stream.read().splitlines()
    content = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    first = content[0].strip().casefold() if content else ""
    if fmt == "auto":
        fmt = "csv" if "," in first or first in ADDRESS_COLUMNS else "lines"
    if fmt == "lines":
        for number, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                yield f"line {number}", line, None
        return
    # A header row (no '@' in it, one column named like an address) says which columns to read;
    # without one, the first column is the address and the second, if any, the order id.
    reader = csv.reader(io.StringIO("\n".join(lines)))
    header: list[str] | None = None
    first = True
    for number, row in enumerate(reader, 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        cells = [cell.strip() for cell in row]
        if first and not any("@" in cell for cell in cells) and set(map(str.casefold, cells)) & set(ADDRESS_COLUMNS):
            header = [cell.casefold() for cell in cells]
            first = False
            continue
        first = False
        if header is not None:
            named = dict(zip(header, cells))
            address = next((named[col] for col in ADDRESS_COLUMNS if named.get(col)), "")
            yield f"line {number}", address, named.get("order_id") or named.get("order") or None
        else:
            yield f"line {number}", cells[0], cells[1] if len(cells) > 1 and cells[1] else None


def _error(text: str) -> None:
    """An error that ends the command: always on stderr (under pipe(8) a failing command's output becomes
    the reason in Postfix's log line), and in the log too when that is not stderr (logging.target)."""
    print(f"amzguard: error: {text}", file=sys.stderr)
    if not any(getattr(h, "fd", None) == 2 for h in logging.getLogger().handlers):
        log.error("%s", text)


def _print_skipped(skipped: list[str]) -> None:
    for line in skipped:
        print(f"amzguard: warning: skipped {line}", file=sys.stderr)


def run(args: argparse.Namespace, config: Config) -> int:
    patterns = config.policy.buyers
    store: Store | None = None
    try:
        store = open_store(config.store)
        if args.optout_command == "learn":
            notices = RestrictionNotices(config.restriction.notice_phrases, config.restriction.days)
            return _learn(args, store, patterns, config.learn.keep_unknown, notices)
        return _COMMANDS[args.optout_command](args, store, patterns)
    except StoreError as exc:
        _error(f"opt-out store unavailable: {exc}")
        return EX_TEMPFAIL
    finally:
        if store is not None:
            store.shutdown()


def _add(args: argparse.Namespace, store: Store, patterns: BuyerPatterns) -> int:
    read = _read_addresses(((f"argument {a!r}", a, args.order) for a in args.addresses), patterns, "cli")
    _print_skipped(read.skipped)
    counts = store.add(read.entries)
    print(f"added {counts.changed}, already registered {counts.unchanged}, skipped {len(read.skipped)}")
    return EX_SKIPPED if read.skipped else EX_OK


def _remove(args: argparse.Namespace, store: Store, patterns: BuyerPatterns) -> int:
    read = _read_addresses(((f"argument {a!r}", a, None) for a in args.addresses), patterns, "cli", registering=False)
    _print_skipped(read.skipped)
    counts = store.remove(entry.buyer for entry in read.entries)
    print(f"removed {counts.changed}, not registered {counts.unchanged}, skipped {len(read.skipped)}")
    return EX_SKIPPED if read.skipped else EX_OK


def _list(args: argparse.Namespace, store: Store, patterns: BuyerPatterns) -> int:
    entries = store.entries()
    for entry in entries:
        print(entry.buyer)
    print(f"{len(entries)} opted-out buyer{'s' if len(entries) != 1 else ''}", file=sys.stderr)
    return EX_OK


def _import(args: argparse.Namespace, store: Store, patterns: BuyerPatterns) -> int:
    try:
        if args.file == "-":
            rows = list(_rows(sys.stdin, args.format))
        else:
            with open(args.file, encoding="utf-8-sig", newline="") as stream:
                rows = list(_rows(stream, args.format))
    except OSError as exc:
        _error(f"cannot read {args.file}: {exc.strerror}")
        return EX_SKIPPED
    except UnicodeDecodeError as exc:
        _error(f"{args.file}: not UTF-8 text ({exc.reason} at byte {exc.start})")
        return EX_SKIPPED
    read = _read_addresses(rows, patterns, "import")
    _print_skipped(read.skipped)
    counts = store.add(read.entries)
    print(f"imported {args.file}: added {counts.changed}, already registered {counts.unchanged}, "
          f"skipped {len(read.skipped)}")  # fmt: skip
    return EX_SKIPPED if read.skipped else EX_OK


def _export(args: argparse.Namespace, store: Store, patterns: BuyerPatterns) -> int:
    entries = store.entries()
    if args.format == "lines":
        for entry in entries:
            print(entry.buyer)
    else:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CSV_FIELDS)
        for entry in entries:
            writer.writerow((entry.buyer, entry.order_id or "", entry.source, utc_time(entry.added_at)))
    print(f"exported {len(entries)} opted-out buyer{'s' if len(entries) != 1 else ''}", file=sys.stderr)
    return EX_OK


class KeepError(Exception):
    """The ``optout.learn.keep_unknown`` directory cannot take a message (the pipe then retries)."""


def keep_message(directory: Path, data: bytes, number: int) -> Path:
    """Write ``data`` to a new file in ``directory``, as a maildir's delivery does: a hidden temporary
    file renamed into place, so a reader never sees half a message."""
    name = f"{int(time.time())}.P{os.getpid()}N{number}.{socket.gethostname().replace('/', '_')}"
    temporary, final = directory / f".{name}.tmp", directory / f"{name}.eml"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        except BaseException:
            os.unlink(temporary)
            raise
        os.rename(temporary, final)
    except OSError as exc:
        raise KeepError(f"cannot keep the message in {directory} (optout.learn.keep_unknown): "
                        f"{exc.strerror or exc}") from None  # fmt: skip
    return final


def _raw(message: Message) -> bytes:
    try:
        return message.as_bytes()
    except Exception:  # a message the email package cannot serialise again: keep what it can
        return message.as_string().encode("utf-8", "surrogateescape")


def _report(result: LearnResult, kept: Path | None) -> None:
    order = f"order {result.order_id}" if result.order_id else "no order id"
    where = f"; kept as {kept}" if kept else "; accepted and dropped (optout.learn.keep_unknown is not set)"
    if result.outcome in (Outcome.LEARNED, Outcome.KNOWN):
        print(f"{result.outcome}: {result.buyer} ({order}, notice in {result.language}, {result.detail})")
        log.info("opt-out %s: %s (%s, notice in %s, %s)", result.outcome, result.buyer, order, result.language,
                 result.detail)  # fmt: skip
    elif result.outcome is Outcome.RESTRICTED:
        print(f"{result.outcome}: {result.detail} ({result.label})")
        log.warning("messaging restriction recorded from notice %s: %s; review requests and critical messages "
                    "there are refused until it ends (amzguard restriction list)", result.label, result.detail)
    elif result.outcome is Outcome.SHARED:
        log.warning("opt-out notice %s names %s, the address Amazon Business buyers share (%s): not registered, "
                    "so the other business buyers still get review requests", result.label, result.buyer, order)
    elif result.outcome is Outcome.UNRESOLVED:
        log.warning("unresolved opt-out notice %s (in %s): %s%s", result.label, result.language, result.detail, where)
    else:
        log.warning("not an opt-out notice: %s%s", result.label, where)


def _learn(args: argparse.Namespace, store: Store, patterns: BuyerPatterns, keep: Path | None = None,
           notices: RestrictionNotices | None = None) -> int:  # fmt: skip
    messages = []
    for name in args.files or ["-"]:
        try:
            data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            _error(f"cannot read {name}: {exc.strerror}")
            return EX_DATAERR
        messages.extend(split_messages(data))
    # Learned opt-outs reach Prometheus through the milter: amzguard_optout_entries{source="notice"}.
    tally = {outcome: 0 for outcome in Outcome}
    try:
        for number, (message, result) in enumerate(zip(messages, learn(messages, store, patterns, notices))):
            tally[result.outcome] += 1
            unlearned = result.outcome in (Outcome.UNRESOLVED, Outcome.UNRECOGNISED)
            kept = keep_message(keep, _raw(message), number) if unlearned and keep is not None else None
            _report(result, kept)
    except KeepError as exc:
        _error(f"{exc}; the MTA keeps the message and retries")
        return EX_TEMPFAIL
    print(
        f"learned {tally[Outcome.LEARNED] + tally[Outcome.KNOWN]} (new {tally[Outcome.LEARNED]}, already registered "
        f"{tally[Outcome.KNOWN]}), unresolved {tally[Outcome.UNRESOLVED]}, not recognised {tally[Outcome.UNRECOGNISED]}, "
        f"shared address not registered {tally[Outcome.SHARED]}"
    )
    if tally[Outcome.RESTRICTED]:
        print(f"restriction notices {tally[Outcome.RESTRICTED]}")
    if not messages:
        log.warning("no message in the input")
    return EX_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace, Store, BuyerPatterns], int]] = {
    "add": _add,
    "remove": _remove,
    "list": _list,
    "import": _import,
    "export": _export,
}
