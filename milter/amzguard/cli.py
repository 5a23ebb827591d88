"""Command line: ``amzguard run``, ``amzguard check-config`` and ``amzguard optout …`` (see optout_cli.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__, optout_cli
from .config import ConfigError, config_path_from_env, load_config

LOG_FORMAT = "amzguard[%(process)d]: %(levelname)s: %(message)s"


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
    optout_cli.add_parser(commands, with_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = config_path_from_env(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"amzguard: configuration error: {exc}", file=sys.stderr)
        # As a pipe(8) transport, `optout learn` must make Postfix keep the notice until the config is fixed.
        return optout_cli.EX_TEMPFAIL if getattr(args, "optout_command", None) == "learn" else 2
    if args.command == "check-config":
        print(f"configuration OK: {path}")
        return 0
    if args.command == "optout":
        logging.basicConfig(level=logging.WARNING, format="amzguard: %(message)s", stream=sys.stderr)
        return optout_cli.run(args, config)
    logging.basicConfig(level=config.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    from .server import ServeError, serve  # imports libmilter only for the command that needs it

    try:
        serve(config, socket_spec=args.socket)
    except ServeError as exc:
        logging.getLogger("amzguard").error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
