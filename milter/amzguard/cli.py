"""Command line: ``amzguard run``, ``check-config``, ``check-postfix``, ``explain``, ``lint``, ``optout …`` (see
optout_cli.py) and ``store …`` (store_cli.py).

``-c FILE`` may stand before the command (``amzguard -c FILE optout list``) or after it; after it wins.
Exit status: 0 done; 1 ``check-config --user`` found something that user cannot read or write,
``check-postfix`` found something, or ``run`` could not serve; 2 a configuration or usage error; the
``optout`` and ``store`` commands have their own (optout_cli.py, store_cli.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__, optout_cli, restriction_cli, store_cli
from .cli_common import EX_TEMPFAIL
from .config import Config, ConfigError, config_path_from_env, load_config
from .log_output import configure_logging
from .policy import Origin

CONFIG_HELP = "config file (default: $AMZGUARD_CONFIG or /etc/amzguard/amzguard.yml)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amzguard", description="Milter that keeps a shop's MTA within Amazon's buyer-communication rules."
    )
    parser.add_argument("--version", action="version", version=f"amzguard {__version__}")
    parser.add_argument("-c", "--config", metavar="FILE", help=CONFIG_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        # SUPPRESS: a subcommand without -c leaves the value given before the command in place.
        sub.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP)
        return sub

    run = with_config(commands.add_parser("run", help="run the milter in the foreground"))
    run.add_argument("--socket", metavar="SPEC", help="override milter.socket (unix:/path, inet:PORT@HOST)")
    check = with_config(commands.add_parser("check-config", help="validate the config file and exit"))
    check.add_argument(
        "--user", metavar="NAME", help="also check, as this user, that it can read the config and its secret "
        "files and write the store (root switches to the user in a child process)",
    )  # fmt: skip
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
    _origin_options(explain)
    lint = with_config(
        commands.add_parser("lint", help="the milter's whole judgement of message files, every finding with its line")
    )
    lint.add_argument("files", nargs="+", metavar="FILE.eml", help="RFC 5322 message files ('-': stdin)")
    lint.add_argument("--to", action="append", default=[], metavar="ADDRESS",
                      help="envelope recipient (repeatable; default: the file's To and Cc addresses)")  # fmt: skip
    lint.add_argument("--sender", default=None, metavar="ADDR", help="envelope sender (default: the From address)")
    lint.add_argument("--sendmail", action="store_true", help="judge as submitted with sendmail(1), not SMTP")
    lint.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    _origin_options(lint)
    optout_cli.add_parser(commands, with_config)
    store_cli.add_parser(commands, with_config)
    restriction_cli.add_parser(commands, with_config)
    doctor = with_config(
        commands.add_parser("check-postfix", help="check Postfix's wiring to amzguard on this host (exit 1: findings)")
    )
    doctor.add_argument("--postfix-config", metavar="DIR", help="Postfix config directory (postconf -c DIR)")
    doctor.add_argument("--user", metavar="NAME", help="the milter's user (default: User= of amzguard.service, amzguard)")
    return parser


def _log_target(config: Config) -> dict[str, object]:
    return {"target": config.logging.target, "syslog_socket": config.logging.syslog_socket,
            "journal_socket": config.logging.journal_socket}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = config_path_from_env(args.config)
    # Until the config names a target, warnings (a world-readable secret) go to stderr: "amzguard: warning: …"
    configure_logging("warning", pid=False)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"amzguard: configuration error: {exc}", file=sys.stderr)
        # As a pipe(8) transport, `optout learn` must make Postfix keep the notice until the config is fixed.
        return EX_TEMPFAIL if getattr(args, "optout_command", None) == "learn" else 2
    if args.command == "check-config":
        return _check_config(config, path, args.user)
    if args.command == "optout":
        if args.optout_command == "learn" and config.logging.target != "stderr":
            # Under a pipe transport stderr is lost when the command succeeds; syslog/journal keep the lines.
            configure_logging(config.log_level, replace=True, pid=False, **_log_target(config))
        return optout_cli.run(args, config)
    if args.command == "explain":
        return _explain(config, args)
    if args.command == "store":
        return store_cli.run(args, config)
    if args.command == "restriction":
        return restriction_cli.run(args, config)
    if args.command == "check-postfix":
        return _check_postfix(config, args)
    if args.command == "lint":
        from .lint import run as lint
        from .policy import SubmissionPath

        path = SubmissionPath.LOCAL if args.sendmail else SubmissionPath.SMTP
        origin = _origin(args)
        if origin is None:
            return 2
        return lint(config, args.files, to=args.to, sender=args.sender, path=path, as_json=args.format == "json",
                    origin=origin)  # fmt: skip
    configure_logging(config.log_level, replace=True, **_log_target(config))
    from .server import ServeError, serve  # imports libmilter only for the command that needs it

    try:
        serve(config, socket_spec=args.socket, config_path=path)
    except ServeError as exc:
        logging.getLogger("amzguard").error("%s", exc)
        return 1
    return 0


def _check_config(config: Config, path: object, user: str | None) -> int:
    if user is None:
        print(f"configuration OK: {path}")
        return 0
    from .user_check import UserCheckError, check_as, needs

    try:
        findings = check_as(user, needs(config, config.source or path))  # type: ignore[arg-type]
    except UserCheckError as exc:
        print(f"amzguard: check-config --user: {exc}", file=sys.stderr)
        return 2
    for finding in findings:
        word = "error" if finding.fatal else "warning"
        print(f"amzguard: {word}: {finding.text(user)}", file=sys.stderr)
    if any(finding.fatal for finding in findings):
        print(f"configuration valid, but not usable by user {user}: {path}")
        return 1
    if findings:
        print(f"configuration OK: {path} (user {user} can read it and its secrets; the directories named "
              "on stderr do not exist yet)")  # fmt: skip
    else:
        print(f"configuration OK: {path} (user {user} can read it and its secrets, and write the store)")
    return 0


def _origin_options(parser: argparse.ArgumentParser) -> None:
    """What the milter reads from the MTA beyond the envelope (channels.review.recognise): options, not the
    file's headers, because a Received: line is the sender's to write and the milter never reads it."""
    parser.add_argument("--sasl-login", metavar="NAME", help="the SMTP AUTH login ({auth_authen}; SMTP path only)")
    parser.add_argument("--client", metavar="ADDR", help="the SMTP client's IP address (SMTP path only)")


def _origin(args: argparse.Namespace) -> Origin | None:
    """The ``Origin`` the options give; None (after saying why on stderr) for options the milter would
    never see: on the sendmail(1) path there is no login and no client."""
    from .policy import client_address

    if args.sendmail and (args.sasl_login or args.client):
        print(f"amzguard: {args.command}: --sasl-login and --client do not exist on the sendmail(1) path "
              "(the milter sees neither there)", file=sys.stderr)  # fmt: skip
        return None
    client = client_address(args.client) if args.client else None
    if args.client and client is None:
        print(f"amzguard: {args.command}: --client: not an IP address: {args.client!r}", file=sys.stderr)
        return None
    return Origin(sasl_login=args.sasl_login or None, client=client)


def _explain(config: Config, args: argparse.Namespace) -> int:
    from .explain import HeaderSyntaxError, explain, parse_header
    from .policy import SubmissionPath

    try:
        headers = [parse_header(text) for text in args.header]
    except HeaderSyntaxError as exc:
        print(f"amzguard: --header: {exc}", file=sys.stderr)
        return 2
    path = SubmissionPath.LOCAL if args.sendmail else SubmissionPath.SMTP
    origin = _origin(args)
    if origin is None:
        return 2
    for line in explain(config, args.addresses, args.sender, path, headers, origin):
        print(line)
    return 0


def _check_postfix(config: Config, args: argparse.Namespace) -> int:
    from .postfix_check import check_postfix
    from .postfix_probe import ProbeError, SystemHost, read_postfix_settings, unit_user, wiring_from_config

    try:
        settings = read_postfix_settings(args.postfix_config)
    except ProbeError as exc:
        print(f"amzguard: fatal: cannot read Postfix's settings: {exc}", file=sys.stderr)
        return 2
    findings = check_postfix(settings, wiring_from_config(config, args.user or unit_user()), SystemHost(args.postfix_config))
    for finding in findings:
        print(finding.line())
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
