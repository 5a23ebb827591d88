"""``amzguard restriction list|add|clear``: Amazon's messaging restrictions from the command line.

A restriction is normally learned from Amazon's notice by ``amzguard optout learn`` (the pipe transport of
the learn address); ``add`` records one that arrived another way (Seller Central's note on a refused
message), ``clear`` ends one early (Amazon lifted it). Like ``amzguard optout``: idempotent, counts on
stdout. Exit status: 0 done; 2 a marketplace name that is none (nothing changed); 75 (EX_TEMPFAIL) the
store could not be used.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from .cli_common import EX_OK, EX_TEMPFAIL, EX_USAGE, utc_time
from .config import Config
from .policy.restriction import ALL, Restriction, valid_marketplace
from .store import Store, StoreError, open_store



def add_parser(commands: argparse._SubParsersAction, with_config: Callable[[argparse.ArgumentParser], object]) -> None:
    restriction = commands.add_parser("restriction", help="Amazon's messaging restrictions (list, add, clear)")
    sub = restriction.add_subparsers(dest="restriction_command", required=True, metavar="SUBCOMMAND")
    listing = sub.add_parser("list", help="print the restrictions: marketplace, until, source, in force or ended")
    add = sub.add_parser("add", help="record a restriction (refuses review requests and critical messages)")
    add.add_argument("--marketplace", default=ALL, metavar="MARKETPLACE",
                     help="de, co.uk, com, … or amazon.de (default: all marketplaces)")  # fmt: skip
    add.add_argument("--days", type=int, metavar="DAYS", help="how long it holds (default: restriction.days)")
    clear = sub.add_parser("clear", help="end restrictions early (default: all)")
    clear.add_argument("--marketplace", metavar="MARKETPLACE", help="only this one (as recorded: de, *, …)")
    for parser in (listing, add, clear):
        with_config(parser)


def run(args: argparse.Namespace, config: Config) -> int:
    store: Store | None = None
    try:
        store = open_store(config.store)
        if args.restriction_command == "list":
            return _list(store)
        if args.restriction_command == "add":
            return _add(store, args.marketplace, config.restriction.days if args.days is None else args.days)
        return _clear(store, args.marketplace)
    except StoreError as exc:
        print(f"amzguard: restriction: store unavailable: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        if store is not None:
            store.shutdown()


def _list(store: Store) -> int:
    now = int(time.time())
    rows = store.restrictions()
    for row in rows:
        state = "in force" if row.in_force(now) else "ended"
        print(f"{row.marketplace}\t{utc_time(row.until)}\t{row.source}\t{state}")
    print(f"{sum(r.in_force(now) for r in rows)} restriction(s) in force", file=sys.stderr)
    return EX_OK


def _marketplace(text: str) -> str | None:
    found = valid_marketplace(text)
    if found is None:
        print(f"amzguard: restriction: not a marketplace: {text!r} (de, co.uk, com, amazon.fr, or *)",
              file=sys.stderr)  # fmt: skip
    return found


def _add(store: Store, text: str, days: int) -> int:
    marketplace = _marketplace(text)
    if marketplace is None or not 0 < days <= 365:
        if marketplace is not None:
            print(f"amzguard: restriction: --days {days}: give 1..365", file=sys.stderr)
        return EX_USAGE
    until = int(time.time()) + days * 86400
    counts = store.restrict([Restriction(marketplace, until, "cli")])
    print(f"restriction {marketplace} until {utc_time(until)}: "
          f"{'recorded' if counts.changed else 'already holds longer'}")  # fmt: skip
    return EX_OK


def _clear(store: Store, text: str | None) -> int:
    marketplace = None if text is None else _marketplace(text)
    if text is not None and marketplace is None:
        return EX_USAGE
    removed = store.lift(None if marketplace is None else [marketplace])
    print(f"cleared {removed}")
    return EX_OK
