"""Opt-out register lookups at 10k / 100k / 1M entries, with peak memory, on SQLite and PostgreSQL.

The opt-out register (issue 4) is not in this tree yet. This harness is ready for it: plug the store
in with ``--store module:factory`` here, or ``make bench BENCH_ARGS='--register-store module:factory'``.
Until then it runs against ``SetStore`` below, an in-memory stand-in that only proves the harness works;
its figures say nothing about amzguard's register and the report says so.

What the harness expects of a store (see ``OptOutStore``):

- ``factory(directory: Path) -> store``: a new, empty store; ``directory`` is a fresh private directory
  the store may put files in (e.g. its SQLite database);
- ``store.add_many(addresses: Iterable[str]) -> None``: add opt-outs in bulk (one call per size);
- ``store.is_opted_out(address: str) -> bool``: the lookup the milter makes per buyer recipient.

Addresses are made-up buyer addresses written ``local@domain`` as ``Address.text()`` gives them
(lower-case relay domains, mixed-case local parts); the store does whatever normalisation it needs.
Each size is measured in a fresh child process, so peak memory is that process's high-water mark
(``VmHWM``) above what it used before building the store (interpreter and harness excluded).
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parents[1]
SIZES = (10_000, 100_000, 1_000_000)
STAND_IN = "bench.register_bench:SetStore"
AMZGUARD_STORE = "bench.register_bench:SqliteRegister"
POSTGRES_STORE = "bench.register_bench:PostgresRegister"
BOTH_STORES = f"{AMZGUARD_STORE},{POSTGRES_STORE}"
_TLDS = ("de", "com", "co.uk", "fr", "it", "es")


class OptOutStore(Protocol):
    def add_many(self, addresses: Iterable[str]) -> None: ...

    def is_opted_out(self, address: str) -> bool: ...


class SetStore:
    """Stand-in only (a Python set): exercises the harness until the real register can be plugged in."""

    def __init__(self, directory: Path) -> None:
        self._addresses: set[str] = set()

    def add_many(self, addresses: Iterable[str]) -> None:
        self._addresses.update(address.casefold() for address in addresses)

    def is_opted_out(self, address: str) -> bool:
        return address.casefold() in self._addresses


class SqliteRegister:
    """amzguard's opt-out register (SQLite, WAL), driven as the milter drives it.

    Entries go in under their register key (``buyer_key``) in batches, as ``optout import`` does; a
    lookup is ``OptOutStore.opted_out`` for the keys of one buyer recipient, as at end of message.
    """

    BATCH = 50_000

    def __init__(self, directory: Path) -> None:
        from amzguard.address import BuyerPatterns
        from amzguard.config import DEFAULT_MARKED_PREFIXES, DEFAULT_RELAY_DOMAINS

        self._patterns = BuyerPatterns(DEFAULT_MARKED_PREFIXES, DEFAULT_RELAY_DOMAINS)
        self._store = self._open(directory)

    def _open(self, directory: Path):  # type: ignore[no-untyped-def]
        from amzguard.store import SqliteStore

        return SqliteStore(directory / "amzguard.sqlite")

    def _keys(self, address: str) -> tuple[str, ...]:
        from amzguard.address import classify_recipient, recipient_keys

        return recipient_keys(classify_recipient(address, self._patterns), self._patterns.marked_prefixes)

    def add_many(self, addresses: Iterable[str]) -> None:
        from amzguard.store import OptOut

        batch: list[OptOut] = []
        for address in addresses:
            batch.extend(OptOut(key, source="import") for key in self._keys(address))
            if len(batch) >= self.BATCH:
                self._store.add(batch)
                batch = []
        if batch:
            self._store.add(batch)

    def is_opted_out(self, address: str) -> bool:
        return bool(self._store.opted_out(self._keys(address)))


class PostgresRegister(SqliteRegister):
    """The same register on PostgreSQL: a throwaway cluster of this child process (tests/support/postgres.py,
    initdb on ``directory``'s file system, fsync off), reached over its unix socket with the milter's pool.
    Disk is not counted (the cluster lives outside ``directory``); the cluster is removed at exit."""

    def _open(self, directory: Path):  # type: ignore[no-untyped-def]
        import atexit

        from amzguard.store.postgres import PostgresStore
        from tests.support.postgres import PostgresCluster

        cluster = PostgresCluster().start()
        atexit.register(cluster.destroy)
        url = cluster.socket_url(cluster.new_database("bench"))
        store = PostgresStore(url)
        store.migrate()
        atexit.register(store.shutdown)  # runs before cluster.destroy (atexit is last in, first out)
        return store


def buyer_address(n: int) -> str:
    """A made-up relay address; distinct for every n."""
    return f"{n * 2654435761 % 2**40:010x}Q{n}@marketplace.amazon.{_TLDS[n % len(_TLDS)]}"


def _addresses(count: int) -> Iterator[str]:
    return (buyer_address(n) for n in range(count))


def load_factory(spec: str) -> Callable[[Path], OptOutStore]:
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise SystemExit(f"--store wants module:factory, got {spec!r}")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return getattr(importlib.import_module(module_name), attribute)


def _vm_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _percentile_us(samples: list[int], fraction: float) -> float:
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(len(samples) * fraction))] / 1000


def measure_size(spec: str, size: int, lookups: int) -> dict[str, float]:
    """Build a store of ``size`` entries and time lookups (half present, half absent); run in a child."""
    factory = load_factory(spec)
    rng = random.Random(size)
    hits = [buyer_address(rng.randrange(size)) for _ in range(lookups // 2)]
    misses = [buyer_address(size + rng.randrange(size)) for _ in range(lookups - lookups // 2)]
    queries = hits + misses
    rng.shuffle(queries)
    rss_before = _vm_kib("VmRSS")
    with tempfile.TemporaryDirectory(prefix="amzguard-bench-register-") as directory:
        store = factory(Path(directory))
        start = time.perf_counter()
        store.add_many(_addresses(size))
        build_seconds = time.perf_counter() - start
        for query in queries[:1000]:
            store.is_opted_out(query)
        clock = time.perf_counter_ns
        samples = []
        found = 0
        start = time.perf_counter()
        for query in queries:
            t0 = clock()
            found += store.is_opted_out(query)
            samples.append(clock() - t0)
        lookup_seconds = time.perf_counter() - start
        disk = sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file())
    if found != len(hits):
        raise SystemExit(f"store answered {found} opted-out of {len(hits)} present and {len(misses)} absent")
    return {
        "size": size,
        "build_seconds": build_seconds,
        "lookups_per_second": len(queries) / lookup_seconds,
        "p50_us": _percentile_us(samples, 0.5),
        "p99_us": _percentile_us(samples, 0.99),
        "peak_mib": (_vm_kib("VmHWM") - rss_before) / 1024,
        "disk_mib": disk / 2**20,
    }


def compare_report(results: dict[str, list[dict[str, float]]]) -> str:
    """PostgreSQL beside SQLite, size by size: the p50 and p99 per lookup, and the ratio."""
    if AMZGUARD_STORE not in results or POSTGRES_STORE not in results:
        return ""
    lines = ["register lookups, PostgreSQL (unix socket) beside SQLite, same run:",
             f"  {'entries':>9} {'p50 us sqlite':>14} {'p50 us pg':>10} {'p99 us sqlite':>14} {'p99 us pg':>10}"
             f" {'p50 ratio':>10}"]  # fmt: skip
    for lite, pg in zip(results[AMZGUARD_STORE], results[POSTGRES_STORE]):
        lines.append(f"  {int(lite['size']):>9} {lite['p50_us']:>14.1f} {pg['p50_us']:>10.1f} {lite['p99_us']:>14.1f}"
                     f" {pg['p99_us']:>10.1f} {pg['p50_us'] / lite['p50_us']:>10.1f}")  # fmt: skip
    return "\n".join(lines)


def run(spec: str, sizes: Sequence[int], lookups: int) -> list[dict[str, float]]:
    results = []
    for size in sizes:
        child = subprocess.run(
            [sys.executable, "-m", "bench.register_bench", "--worker", "--store", spec,
             "--sizes", str(size), "--lookups", str(lookups)],
            capture_output=True, text=True, cwd=REPO, check=False,
        )  # fmt: skip
        if child.returncode != 0:
            raise SystemExit(f"register bench, size {size}: {child.stderr.strip() or child.stdout.strip()}")
        results.append(json.loads(child.stdout))
    return results


def format_report(spec: str, results: list[dict[str, float]]) -> str:
    if spec == STAND_IN:
        title = (
            "opt-out register lookups: PLACEHOLDER (no register in this tree yet; figures below are the\n"
            "  in-memory stand-in SetStore and only show the harness works; plug the store in with\n"
            "  python -m bench --register-store module:factory, see bench/register_bench.py)"
        )
    else:
        title = f"opt-out register lookups: store {spec}"
    lines = [
        title,
        f"  {'entries':>9} {'build s':>8} {'lookups/s':>10} {'p50 us':>7} {'p99 us':>7}"
        f" {'peak MiB':>9} {'disk MiB':>9}",
    ]
    for r in results:
        lines.append(
            f"  {int(r['size']):>9} {r['build_seconds']:>8.2f} {r['lookups_per_second']:>10.0f} {r['p50_us']:>7.1f}"
            f" {r['p99_us']:>7.1f} {r['peak_mib']:>9.1f} {r['disk_mib']:>9.1f}"
        )
    lines.append("  lookups: half present, half absent, shuffled; peak = child's VmHWM above its RSS before building")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.register_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=BOTH_STORES,
                        help=f"module:factory of the store, comma-separated (default: {BOTH_STORES})")  # fmt: skip
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="comma-separated entry counts")
    parser.add_argument("--lookups", type=int, default=100_000, help="lookups per size (default 100000)")
    parser.add_argument("--smoke", action="store_true", help="small sizes (checks the bench works)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.worker:
        print(json.dumps(measure_size(args.store.split(",")[0], sizes[0], args.lookups)))
        return 0
    if args.smoke:
        sizes, args.lookups = [1000, 10_000], 2000
    results = {}
    for spec in args.store.split(","):
        results[spec] = run(spec, sizes, args.lookups)
        print(format_report(spec, results[spec]))
    comparison = compare_report(results)
    if comparison:
        print(comparison)
    return 0


if __name__ == "__main__":
    sys.exit(main())
