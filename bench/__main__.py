"""``python -m bench`` (what ``make bench`` runs): the pipeline benchmark, then the policy and register ones.

Options other than those below go to the pipeline benchmark (``python -m bench.pipeline --help``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench import pipeline, policy_bench, register_bench


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__, add_help=False)
    parser.add_argument("--smoke", action="store_true", help="short runs of everything (checks the benches work)")
    parser.add_argument("--register-store", default=register_bench.BOTH_STORES,
                        help="module:factory of the register's store(s), comma-separated (default: SQLite and PostgreSQL)")
    parser.add_argument("--skip-pipeline", action="store_true", help="only the policy and register benchmarks")
    args, rest = parser.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        parser.print_help()
        print("\nThe pipeline benchmark's options:")
    smoke = ["--smoke"] if args.smoke else []
    if not args.skip_pipeline:
        status = pipeline.main([*rest, *smoke])
        if status != 0:
            return status
        print()
    policy_bench.main(smoke)
    print()
    return register_bench.main(["--store", args.register_store, *smoke])


if __name__ == "__main__":
    sys.exit(main())
