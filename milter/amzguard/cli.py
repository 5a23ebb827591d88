"""Command line: ``amzguard run``, ``check-config``, ``explain``, ``lint`` and ``optout …`` (see optout_cli.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__, optout_cli
from .config import Config, ConfigError, config_path_from_env, load_config
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
    explain = with_config(
        commands.add_parser("explain", help="show what the config decides for a message to these addresses, and why")
    )
    explain.add_argument("addresses", nargs="+", metavar="ADDRESS", help="envelope recipient(s) of one message")
    explain.add_argument("--sender", default="", metavar="ADDR", help="envelope sender (default: <>)")
    explain.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'", help="a header field of the message (repeatable)"
    )
    explain.add_argument(
        "--sendmail", action="store_true", help="submitted with sendmail(1) (Postfix non_smtpd_milters), not SMTP"
    )
    lint = with_config(
        commands.add_parser("lint", help="the milter's whole judgement of message files, every finding with its line")
    )
    lint.add_argument("files", nargs="+", metavar="FILE.eml", help="RFC 5322 message files ('-': stdin)")
    lint.add_argument("--to", action="append", default=[], metavar="ADDRESS",
                      help="envelope recipient (repeatable; default: the file's To and Cc addresses)")  # fmt: skip
    lint.add_argument("--sender", default=None, metavar="ADDR", help="envelope sender (default: the From address)")
    lint.add_argument("--sendmail", action="store_true", help="judge as submitted with sendmail(1), not SMTP")
    lint.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
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
    if args.command == "explain":
        return _explain(config, args)
    if args.command == "lint":
        from .lint import run as lint
        from .policy import SubmissionPath

        path = SubmissionPath.LOCAL if args.sendmail else SubmissionPath.SMTP
        return lint(config, args.files, to=args.to, sender=args.sender, path=path, as_json=args.format == "json")
    configure_logging(config.log_level)
    from .server import ServeError, serve  # imports libmilter only for the command that needs it

    try:
        serve(config, socket_spec=args.socket, config_path=path)
    except ServeError as exc:
        logging.getLogger("amzguard").error("%s", exc)
        return 1
    return 0


def _explain(config: Config, args: argparse.Namespace) -> int:
    from .explain import HeaderSyntaxError, explain, parse_header
    from .policy import SubmissionPath

    try:
        headers = [parse_header(text) for text in args.header]
    except HeaderSyntaxError as exc:
        print(f"amzguard: --header: {exc}", file=sys.stderr)
        return 2
    path = SubmissionPath.LOCAL if args.sendmail else SubmissionPath.SMTP
    for line in explain(config, args.addresses, args.sender, path, headers):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
