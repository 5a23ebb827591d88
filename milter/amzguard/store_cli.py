"""``amzguard store init|migrate|status|copy``: the store's schema, its state, and moving it.

``init`` and ``migrate`` create the schema or bring it to this amzguard's version (idempotent; on
PostgreSQL under an advisory lock, so two hosts may run it at once). The milter never changes a
PostgreSQL schema itself (its database user needs no DDL rights) and refuses one newer than it knows.
``copy --from A --to B`` copies everything the store holds (opt-outs with source, order and time; review
requests; buyer messages) from A to B, creating B's schema if needed; a row B already has stays as it is,
so a copy run twice changes nothing. A location is a libpq URI or keyword string, ``sqlite:PATH`` or a
file path; left out, the configured store (``store.url`` or ``store.path``, with ``store.password_file``).

Exit status: 0 done; 1 ``status`` found a schema the milter would not use; 75 (EX_TEMPFAIL) a store could
not be used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .cli_common import EX_OK, EX_TEMPFAIL, utc_time
from .config import Config
from .store import SCHEMA_VERSION, Store, StoreError, open_location, open_store

EX_UNUSABLE = 1
"""``status``: a schema the milter would not use."""


def add_parser(commands: argparse._SubParsersAction, with_config: Callable[[argparse.ArgumentParser], object]) -> None:
    store = commands.add_parser("store", help="the store's schema and state; copy it (init, migrate, status, copy)")
    sub = store.add_subparsers(dest="store_command", required=True, metavar="SUBCOMMAND")
    for name, text in (("init", "create the store's schema (idempotent)"),
                       ("migrate", "bring the store's schema to this amzguard's version"),
                       ("status", "show the store's backend, schema version and size")):  # fmt: skip
        part = sub.add_parser(name, help=text)
        part.add_argument("--url", metavar="LOCATION", help="this store instead of the configured one")
        with_config(part)
    copy = with_config(sub.add_parser("copy", help="copy everything from one store to another (idempotent)"))
    copy.add_argument("--from", dest="source", metavar="LOCATION", help="default: the configured store")
    copy.add_argument("--to", dest="target", metavar="LOCATION", help="default: the configured store")


def _open(config: Config, location: str | None) -> Store:
    if location is None:
        return open_store(config.store)
    return open_location(location, config.store.retention_days)


def run(args: argparse.Namespace, config: Config) -> int:
    opened: list[Store] = []

    def store_at(location: str | None) -> Store:
        opened.append(_open(config, location))
        return opened[-1]

    try:
        if args.store_command == "copy":
            if args.source is None and args.target is None:
                print("amzguard: store copy: give --from, --to or both (the other is the configured store)",
                      file=sys.stderr)  # fmt: skip
                return 2
            return _copy(store_at(args.source), store_at(args.target))
        store = store_at(args.url)
        if args.store_command == "status":
            return _status(store)
        found, now = store.migrate()
        if found == now:
            print(f"{store.location}: schema {now}, up to date")
        elif found is None:
            print(f"{store.location}: schema {now} created")
        else:
            print(f"{store.location}: schema migrated from {found} to {now}")
        return EX_OK
    except StoreError as exc:
        print(f"amzguard: error: store unavailable: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        for store in opened:
            store.shutdown()


def _status(store: Store) -> int:
    status = store.status()
    schema = "none (run amzguard store init)" if status.schema is None else str(status.schema)
    print(f"backend: {status.backend}\nlocation: {status.location}\nschema: {schema} (this amzguard: {SCHEMA_VERSION})")
    if status.schema != SCHEMA_VERSION:
        word = ("newer than this amzguard knows" if (status.schema or 0) > SCHEMA_VERSION
                else "missing (amzguard store init)" if status.schema is None else "older (amzguard store migrate)")
        print(f"amzguard: error: the milter would not use this store: schema {word}", file=sys.stderr)
        return EX_UNUSABLE
    register = ", ".join(f"{source} {count}" for source, count in sorted(status.register.items()))
    print(f"opt-outs: {sum(status.register.values())} ({register})\nreview requests: {status.review_requests}\n"
          f"buyer messages: {status.buyer_messages}")  # fmt: skip
    today = ", ".join(f"{market} {count}" for market, count in sorted(status.proactive_today.items()))
    print(f"proactive messages today ({status.today} UTC, daily limit): {today or 'none'}")
    # What holds review requests and critical messages back now, beside the count (restriction list: all rows).
    restricted = ", ".join(f"{r.marketplace} until {utc_time(r.until)}" for r in status.restrictions)
    print(f"messaging restrictions in force: {restricted or 'none'}")
    return EX_OK


def _copy(source: Store, target: Store) -> int:
    if source.location == target.location:
        print(f"amzguard: store copy: --from and --to are the same store ({source.location})", file=sys.stderr)
        return 2
    if source.schema_version() is None:
        raise StoreError(f"{source.location}: nothing to copy (no amzguard store there)")
    source.check()  # a SQLite file of schema 1 is migrated here, a newer one refused
    target.migrate()
    entries, reviews, messages = source.entries(), source.review_rows(), source.message_rows()
    added = target.add(entries)
    rows = target.put_rows(reviews, messages)
    restricted = target.restrict(source.restrictions())
    counted = target.put_counts(source.daily_counts())
    print(f"copied from {source.location} to {target.location}: opt-outs {added.changed} added, "
          f"{added.unchanged} already there; review requests and buyer messages {rows.changed} added, "
          f"{rows.unchanged} already there; restrictions {restricted.changed} added or extended; "
          f"daily counts {counted.changed} added or raised")  # fmt: skip
    return EX_OK
