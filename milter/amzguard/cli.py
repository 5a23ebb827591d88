"""Command line: ``amzguard run`` and ``amzguard check-config``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .config import ConfigError, config_path_from_env, load_config
from .log_output import configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amzguard", description="Milter that keeps a shop's MTA within Amazon's buyer-communication rules."
    )
    parser.add_argument("--version", action="version", version=f"amzguard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "-c", "--config", metavar="FILE", help="config file (default: $AMZGUARD_CONFIG or /etc/amzguard/amzguard.yml)"
        )
        return sub

    run = with_config(commands.add_parser("run", help="run the milter in the foreground"))
    run.add_argument("--socket", metavar="SPEC", help="override milter.socket (unix:/path, inet:PORT@HOST)")
    with_config(commands.add_parser("check-config", help="validate the config file and exit"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = config_path_from_env(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"amzguard: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"configuration OK: {path}")
        return 0
    configure_logging(config.log_level)
    from .server import ServeError, serve  # imports libmilter only for the command that needs it

    try:
        serve(config, socket_spec=args.socket)
    except ServeError as exc:
        logging.getLogger("amzguard").error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
