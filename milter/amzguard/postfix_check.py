"""``amzguard check-postfix``: the checks, pure, over Postfix settings already read.

amzguard can only keep mail from buyers that Postfix hands it, and only as long as Postfix routes what
amzguard decided: a milter list that misses the socket, ``milter_default_action = accept``, a stand-in
domain the transport map does not bounce, or a virtual alias that turns a shop address into a buyer after
the milter has judged the message each undo it without a single error in amzguard's own log. Each check
here reads ``PostfixSettings`` (main.cf and master.cf as ``postconf`` prints them) and asks the machine
only through ``Host`` (a table lookup, a file, a permission), so the tests drive every check with made-up
settings and a fake host, and postfix_probe.py supplies the real ones.

No I/O and no pymilter here.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

from .address import BuyerPatterns, classify_recipient
from .policy import MixedRecipients, Reason, refusal_address
from .user_check import CONFIG_NEED, Finding as UserFinding, Need, UserCheckError
from .postfix_syntax import (
    INDEXED_TABLES,
    LISTABLE_TABLES,
    PATTERN_TABLES,
    Endpoint,
    MilterEntry,
    compat_major,
    config_arg,
    includes,
    inet_meets,
    inner_tables,
    libmilter_endpoint,
    parse_milter_list,
    pattern_results,
    pipe_argv,
    postfix_endpoint,
    postfix_spelling,
    relative_to,
    result_addresses,
    runs_optout_learn,
    socket_file,
    source_entries,
    split_list,
    split_table,
    unbrace,
)

# Post-milter address mappings: cleanup, local(8) and the SMTP client apply them after amzguard judged the
# envelope, so a result that is a buyer address reaches the buyer unjudged.
MAPPING_PARAMETERS: tuple[tuple[str, str], ...] = (
    ("virtual_alias_maps", "rewrites a recipient to"),
    ("canonical_maps", "rewrites an address to"),
    ("recipient_canonical_maps", "rewrites a recipient to"),
    ("recipient_bcc_maps", "adds a blind copy to"),
    ("sender_bcc_maps", "adds a blind copy to"),
    ("alias_maps", "delivers a local alias to"),
    # generic(5) rewrites envelope and header addresses in the SMTP client, after routing: a relayhost
    # then delivers to the rewritten recipient.
    ("smtp_generic_maps", "rewrites an outgoing address to"),
)
DEFAULT_ACTIONS = frozenset({"accept", "reject", "tempfail", "quarantine"})
REVIEW_PROBE_VALUE = "review x"
"""The value a tag header is probed with: what follows the header name does not matter to the shipped
``/^X-Amzguard-Channel:/ IGNORE`` rule, and no real secret ever goes on a command line."""
STAND_IN_BUYER = "q7x@marketplace.amazon.de"
"""Made-up buyer whose stand-in addresses are looked up (the transport map matches the domain only)."""


class Severity(StrEnum):
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of output, like ``postfix check``: what is wrong, where, and what to do."""

    severity: Severity
    parameter: str
    """The setting at fault: a main.cf parameter, ``name (master.cf SERVICE/TYPE -o)``, a file."""
    text: str

    def line(self) -> str:
        # Table contents are printed (addresses, results): a control character must not split the line.
        text = f"amzguard: {self.severity}: {self.parameter}: {self.text}"
        return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


@dataclass(frozen=True, slots=True)
class Service:
    """One master.cf service (``postconf -F`` fields, ``postconf -P`` overrides)."""

    name: str
    type: str
    chroot: str
    """``y``, ``n`` or ``-`` (the default, which depends on compatibility_level)."""
    command: str
    """The whole command field: program name, ``-o`` options and (for pipe) its attributes."""
    overrides: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}/{self.type}"

    @property
    def program(self) -> str:
        return self.command.split(None, 1)[0] if self.command.strip() else ""


@dataclass(frozen=True, slots=True)
class PostfixSettings:
    """main.cf (``postconf -x``: every parameter, defaults included, ``$name`` expanded) and master.cf."""

    params: Mapping[str, str]
    services: tuple[Service, ...]

    def get(self, name: str, service: Service | None = None) -> str:
        if service is not None and name in service.overrides:
            return service.overrides[name]
        return self.params.get(name, "")

    def source(self, name: str, service: Service | None = None) -> str:
        """How a finding names the parameter: main.cf's, or a service's ``-o`` override."""
        if service is not None and name in service.overrides:
            return f"{name} (master.cf {service.key} -o)"
        return name

    def chrooted(self, service: Service) -> bool:
        if service.chroot in ("y", "n"):
            return service.chroot == "y"
        # master_ent.c: the "-" default is y below compatibility_level 1, n from 1 on.
        return compat_major(self.params.get("compatibility_level", "0")) < 1

    def by_program(self, program: str) -> tuple[Service, ...]:
        return tuple(s for s in self.services if s.program == program)


@dataclass(frozen=True, slots=True)
class Wiring:
    """What amzguard's own config says Postfix must be wired to (built by postfix_probe.wiring_from_config)."""

    socket: str
    """libmilter spec (``milter.socket``): ``unix:/path``, ``inet:PORT@HOST``, ``inet6:PORT@HOST``."""
    buyers: BuyerPatterns
    bounce_domain: str
    mixed_recipients: MixedRecipients
    tag_header: str
    review_enabled: bool
    needs: tuple[Need, ...]
    """What the milter's user must be able to read and write (user_check.needs: config, secrets, store,
    socket directory)."""
    user: str
    """The milter's user (systemd unit ``User=``, or ``--user``)."""
    sasl_logins: bool = False
    """Some ``channels.review.recognise`` entry names a ``sasl_login`` (it needs ``{auth_authen}``)."""


class MapError(Exception):
    """A table could not be read (missing file or .db, unsupported type, syntax error)."""


class Host(Protocol):
    """What the checks ask of the machine; postfix_probe.SystemHost runs postmap and reads files."""

    def query(self, table: str, key: str) -> str | None:
        """``postmap -q KEY TABLE``: the value, None when not found; MapError when unreadable."""

    def sequence(self, table: str) -> list[tuple[str, str]]:
        """``postmap -s TABLE``: every (key, value); MapError when the table cannot list itself."""

    def read_text(self, path: str) -> str:
        """A file's text; OSError when it cannot be read."""

    def user_exists(self, user: str) -> bool: ...

    def check_as(self, user: str, needs: list[Need]) -> list[UserFinding]:
        """user_check.check_as: the needs ``user`` cannot meet, tried as that user; UserCheckError if it
        cannot be tried (not root)."""

    def exists(self, path: str) -> bool: ...

    def executable(self, path: str) -> bool: ...


# ------------------------------------------------------------------ the checks


@dataclass
class _Report:
    findings: list[Finding] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def add(self, severity: Severity, parameter: str, text: str) -> None:
        finding = Finding(severity, parameter, text)
        if finding.line() not in self.seen:
            self.seen.add(finding.line())
            self.findings.append(finding)


def check_postfix(pf: PostfixSettings, wiring: Wiring, host: Host) -> list[Finding]:
    """Every check, in the order of the docs (docs/check-postfix.md); an empty list means clean."""
    report = _Report()
    check_milters(pf, wiring, report)
    check_transport(pf, wiring, host, report)
    check_mappings(pf, wiring, host, report)
    check_files(pf, wiring, host, report)
    check_header_checks(pf, wiring, host, report)
    check_sasl_macro(pf, wiring, report)
    return report.findings


def _milter_contexts(pf: PostfixSettings) -> Iterator[tuple[str, Service | None, str]]:
    """(parameter, service whose settings and chroot apply, what passes there) for both milter lists."""
    smtpd = pf.by_program("smtpd")
    for service in smtpd or (None,):
        yield "smtpd_milters", service, "mail received over SMTP"
    cleanup_name = pf.params.get("cleanup_service_name", "cleanup") or "cleanup"
    cleanup = next((s for s in pf.services if s.name == cleanup_name and s.type == "unix"), None)
    yield "non_smtpd_milters", cleanup, "mail submitted with sendmail(1)"


def check_milters(pf: PostfixSettings, wiring: Wiring, report: _Report) -> None:
    """Checks 1 and 2: both milter lists reach amzguard's socket (chroot included) and fail closed."""
    target = libmilter_endpoint(wiring.socket)
    if target is None:
        report.add(Severity.ERROR, "milter.socket", f"cannot read {wiring.socket!r} as a libmilter socket spec")
        return
    if "no_milters" in split_list(pf.params.get("receive_override_options", "")):
        report.add(Severity.ERROR, "receive_override_options",
                   "no_milters: Postfix sends no mail to any milter; remove no_milters")  # fmt: skip
    for parameter, service, what in _milter_contexts(pf):
        if service is not None and "no_milters" in split_list(service.overrides.get("receive_override_options", "")):
            report.add(Severity.WARNING, f"receive_override_options (master.cf {service.key} -o)",
                       f"no_milters: {what} through this service is never seen by amzguard; remove it unless"
                       " this service only takes mail back from a content filter that already passed amzguard")  # fmt: skip
        _check_milter_list(pf, _MilterContext(parameter, service, what, target, wiring.socket), report)
    # receive_override_options is read by the receiving service: pickup(8) for sendmail(1) mail.
    for service in pf.by_program("pickup"):
        if "no_milters" in split_list(service.overrides.get("receive_override_options", "")):
            report.add(Severity.ERROR, f"receive_override_options (master.cf {service.key} -o)",
                       "no_milters: mail submitted with sendmail(1) is never seen by amzguard; remove it")  # fmt: skip


@dataclass(frozen=True, slots=True)
class _MilterContext:
    parameter: str
    service: Service | None
    what: str
    """What passes this list, for messages ("mail received over SMTP")."""
    target: Endpoint
    spec: str

    def where(self) -> str:
        overridden = self.service is not None and self.parameter in self.service.overrides
        return f" in master.cf service {self.service.key}" if overridden and self.service is not None else ""


def _check_milter_list(pf: PostfixSettings, context: _MilterContext, report: _Report) -> None:
    parameter, service, what, target = context.parameter, context.service, context.what, context.target
    queue = pf.params.get("queue_directory", "/var/spool/postfix")
    chrooted = service is not None and pf.chrooted(service)
    label, where = pf.source(parameter, service), context.where()
    suggestion = postfix_spelling(target, queue)
    entries = parse_milter_list(pf.get(parameter, service))
    if not entries:
        text = f"empty: {what}{where} reaches no milter, so amzguard never sees it; set {parameter} = {suggestion}"
        if where:  # a deliberate -o override, e.g. a content filter's re-injection service: a warning
            report.add(Severity.WARNING, label, f"{text}, unless this service only takes mail back from a"
                       " content filter that already passed amzguard")  # fmt: skip
        else:
            report.add(Severity.ERROR, label, text)
        _check_action(pf, parameter, service, None, report)
        return
    ours: list[MilterEntry] = []
    hints: list[str] = []
    for entry in entries:
        problem = _unusable(entry)
        if problem:
            report.add(Severity.ERROR, label, f"{entry.text}: {problem}")
        elif _reaches(entry, target, chrooted, queue):
            ours.append(entry)
        elif service is not None and chrooted and _reaches(entry, target, False, queue):
            opened = socket_file(entry.name.partition(":")[2], True, queue)
            hints.append(f"{entry.name} is opened inside the chroot of master.cf service {service.key}"
                         f" (chroot column y), i.e. at {opened}, not at amzguard's socket {target.path}")  # fmt: skip
    if not ours:
        if service is not None and chrooted and target.kind == "unix" and relative_to(target.path, queue) is None:
            fix = (f"amzguard's socket {target.path} is outside queue_directory {queue}, which a chrooted"
                   f" service cannot reach: put milter.socket under {queue} (e.g. {queue}/amzguard/amzguard.sock)"
                   f" or set the chroot column of {service.key} to n")  # fmt: skip
        else:
            fix = f"set {parameter} = {suggestion}"
        listed = ", ".join(e.text for e in entries)
        problem = "; ".join(hints) or f"no milter in it reaches amzguard's socket {context.spec}{where} (it lists {listed})"
        report.add(Severity.ERROR, label, f"{problem}: {what} is not checked; {fix}")
        _check_action(pf, parameter, service, None, report)
    for entry in ours:
        _check_action(pf, parameter, service, entry, report)


def _unusable(entry: MilterEntry) -> str:
    if entry.error:
        return f"{entry.error}; Postfix stops with a fatal error on it"
    if postfix_endpoint(entry.name) is None:
        return ("Postfix cannot use this milter (it needs unix:PATH or inet:HOST:PORT), so it applies"
                " milter_default_action to every message")  # fmt: skip
    return ""


def _reaches(entry: MilterEntry, target: Endpoint, chrooted: bool, queue: str) -> bool:
    endpoint = postfix_endpoint(entry.name)
    if endpoint is None or endpoint.kind != target.kind:
        return False
    if endpoint.kind == "inet":
        return inet_meets(endpoint, target)
    return socket_file(endpoint.path, chrooted, queue) == posixpath.normpath(target.path)


def _check_action(
    pf: PostfixSettings, parameter: str, service: Service | None, entry: MilterEntry | None, report: _Report
) -> None:
    if entry is not None and "default_action" in entry.settings:
        action, label = entry.settings["default_action"], pf.source(parameter, service)
        name = f"default_action={action} in {entry.text}"
        fix = "remove the default_action override (with milter_default_action = tempfail)"
    else:
        action, label = pf.get("milter_default_action", service), pf.source("milter_default_action", service)
        name, fix = action, "set milter_default_action = tempfail"
    action = action.strip().lower()
    if action == "tempfail":
        return
    if action == "accept":
        report.add(Severity.ERROR, label, f"{name}: while amzguard is down or misbehaves, mail passes unchecked; {fix}")
    elif action == "reject":
        report.add(Severity.WARNING, label, f"{name}: while amzguard is down, SMTP mail is refused with 5xx and"
                   f" sendmail(1) mail bounced instead of retried; {fix}")  # fmt: skip
    elif action == "quarantine":
        report.add(Severity.WARNING, label, f"{name}: while amzguard is down, mail goes to the hold queue unchecked"
                   f" and passes unchecked when released; {fix}")  # fmt: skip
    else:
        report.add(Severity.ERROR, label, f"{name}: not a milter default action ({', '.join(sorted(DEFAULT_ACTIONS))}); {fix}")


def stand_in_addresses(wiring: Wiring) -> list[str]:
    """Every stand-in amzguard may add in place of a refused buyer: one per ``Reason`` (derived from the
    enum, so a new reason is checked without touching this file), built by the policy's own function."""
    buyer = classify_recipient(STAND_IN_BUYER, wiring.buyers)
    return [refusal_address(buyer, reason, wiring.bounce_domain) for reason in Reason]


def transport_lookup(pf: PostfixSettings, maps: list[str], address: str, host: Host) -> tuple[str, str] | None:
    """(value, table) as trivial-rewrite finds it (transport.c, mail_addr_find_strategy): the full address in
    every table, then the domain, its parents and ``*`` in the tables that take partial keys; MapError
    passes through (Postfix would defer the mail)."""
    domain = address.rpartition("@")[2]
    labels = domain.split(".")
    style_dot = "transport_maps" not in split_list(pf.params.get("parent_domain_matches_subdomains", ""))
    parents = [("." if style_dot else "") + ".".join(labels[i:]) for i in range(1, len(labels))]
    fixed = [t for t in maps if _lookup_type(t) not in PATTERN_TABLES]
    for key, tables in [(address, maps), (domain, fixed), *((p, fixed) for p in parents), ("*", fixed)]:
        for table in tables:
            value = host.query(_lookup_name(table), key)
            if value is not None:
                return value, table
    return None


def _lookup_name(table: str) -> str:
    # proxymap(8) only forwards to the same table, and `postmap -q proxy:…` needs a running Postfix.
    while table.startswith("proxy:"):
        table = table[len("proxy:") :]
    return table


def _lookup_type(table: str) -> str:
    return split_table(_lookup_name(table))[0]


def check_transport(pf: PostfixSettings, wiring: Wiring, host: Host, report: _Report) -> None:
    """Check 3: every stand-in domain is routed to Postfix's error: transport (refusal.mixed_recipients bounce)."""
    if wiring.mixed_recipients is not MixedRecipients.BOUNCE:
        return  # `reject` refuses the whole message and adds no stand-in
    maps = split_list(pf.params.get("transport_maps", ""))
    shipped = "regexp:/etc/postfix/amzguard-transport.regexp"
    if not maps:
        report.add(Severity.ERROR, "transport_maps", f"empty: the stand-ins under {wiring.bounce_domain} that replace"
                   " refused buyers go wherever .invalid mail goes instead of bouncing to the sender; set"
                   f" transport_maps = {shipped} (or refusal.mixed_recipients: reject)")  # fmt: skip
        return
    for address in stand_in_addresses(wiring):
        try:
            found = transport_lookup(pf, maps, address, host)
        except MapError as exc:
            report.add(Severity.ERROR, "transport_maps", f"cannot look up the stand-in addresses: {exc}; Postfix"
                       " would defer refused buyers instead of bouncing them: fix the table")  # fmt: skip
            continue
        if found is None:
            report.add(Severity.ERROR, "transport_maps", f"no entry routes the stand-in {address} to error:, so a"
                       " refused buyer goes wherever .invalid mail goes instead of bouncing to the sender;"
                       f" list {shipped} first in transport_maps")  # fmt: skip
            continue
        value, table = found
        channel = value.split(":", 1)[0].strip()
        if channel != "error":
            report.add(Severity.ERROR, "transport_maps", f"{table} routes the stand-in {address} to {value!r}, not"
                       f" to error:; list {shipped} before it")  # fmt: skip


def table_entries(table: str, host: Host, aliases: bool = False) -> list[tuple[str, str]]:
    """Every (key, result) of a table, as far as it can be listed; MapError says why not."""
    kind, name = split_table(table)
    if kind == "proxy":
        return table_entries(name, host, aliases)
    if kind in ("unionmap", "pipemap", "randmap"):
        inner = inner_tables(name)
        if kind == "randmap":  # randmap:{a, b} answers one of its elements
            return [("(any key)", item) for item in inner]
        return [entry for item in inner for entry in table_entries(item, host, aliases)]
    if kind == "static":
        return [("(any key)", unbrace(name) or name)]
    if kind == "fail":
        return []
    if kind in PATTERN_TABLES:
        try:
            return list(pattern_results(host.read_text(name)))
        except OSError as exc:
            raise MapError(f"cannot read {name}: {exc.strerror or exc}") from None
    if kind in LISTABLE_TABLES:
        try:
            return host.sequence(table)
        except MapError:
            if kind not in INDEXED_TABLES:
                raise
        try:  # the source file next to the .db
            return list(source_entries(host.read_text(name), aliases))
        except OSError as exc:
            raise MapError(f"cannot list it (postmap -s failed and the source {name}: {exc.strerror or exc})") from None
    raise MapError(f"a {kind or 'untyped'} table cannot be listed")


def check_mappings(pf: PostfixSettings, wiring: Wiring, host: Host, report: _Report) -> None:
    """Check 4: post-milter mappings whose result is a buyer address."""
    for address in result_addresses(pf.params.get("always_bcc", "")):
        if classify_recipient(address, wiring.buyers).is_buyer:
            report.add(Severity.ERROR, "always_bcc", f"{address} is an Amazon buyer address: every message goes to"
                       " it after amzguard judged the message; remove it")  # fmt: skip
    for parameter, does in MAPPING_PARAMETERS:
        aliases = parameter == "alias_maps"
        for table in split_list(pf.params.get(parameter, "")):
            try:
                entries = table_entries(table, host, aliases)
            except MapError as exc:
                report.add(Severity.WARNING, parameter, f"{table}: {exc}; check yourself that no result is an"
                           " Amazon buyer address (a relay domain or a marked local part), amzguard cannot see"
                           " mappings Postfix applies after it")  # fmt: skip
                continue
            for key, value in entries:
                values = [value]
                if aliases:
                    for path in includes(value):
                        try:
                            values.append(", ".join(host.read_text(path).splitlines()))
                        except OSError:
                            report.add(Severity.WARNING, parameter, f"{table}: {key}: cannot read :include: {path}")
                for address in (a for v in values for a in result_addresses(v)):
                    if classify_recipient(address, wiring.buyers).is_buyer:
                        report.add(Severity.ERROR, parameter, f"{table} {does} the Amazon buyer address {address}"
                                   f" (entry {key}): Postfix applies it after amzguard judged the message, so"
                                   " amzguard never sees that recipient; remove the entry")  # fmt: skip


def check_files(pf: PostfixSettings, wiring: Wiring, host: Host, report: _Report) -> None:
    """Checks 5 and 6: what the milter's user must reach (the needs of ``check-config --user``, tried as
    that user), Postfix's access to the socket, and the `optout learn` pipe service."""
    _check_user(wiring.user, "the milter's user", wiring.needs, host, report)
    _check_socket_access(pf, wiring, host, report)
    _check_optout_pipe(pf, wiring, host, report)


# What to do about a need the user cannot meet, by the kind of access (user_check.Need.access).
_FIXES = {
    "read": "give it a group of {user} and chmod 0640 (never o+r: it may hold secrets)",
    "write": "chown it to {user} (install -d -o {user} -m 0770 {path})",
    "read-write": "chown it to {user}",
    "connect": "give the socket the group {user} (setgid socket directory, systemd/amzguard.tmpfiles) and"
    " milter.socket_mode '0660'",
}


def _check_user(user: str, who: str, needs: tuple[Need, ...], host: Host, report: _Report) -> None:
    if not host.user_exists(user):
        report.add(Severity.ERROR, "user", f"{who} {user} does not exist; create it (systemd/amzguard.sysusers) or"
                   " name the right one with --user")  # fmt: skip
        return
    try:
        found = host.check_as(user, list(needs))
    except UserCheckError as exc:
        report.add(Severity.WARNING, "user", f"cannot check files as {who} {user}: {exc}; run check-postfix as root")
        return
    for finding in found:
        need = finding.need
        fix = _FIXES.get(need.access, "").format(user=user, path=need.path)
        severity = Severity.ERROR if finding.fatal else Severity.WARNING
        report.add(severity, need.what, f"{who} {user} {finding.problem}: {need.path}; {fix}")


def _check_socket_access(pf: PostfixSettings, wiring: Wiring, host: Host, report: _Report) -> None:
    """Postfix's smtpd and cleanup connect as mail_owner, which needs write permission on the socket (and
    search permission on its directories); only checkable while amzguard runs and the socket exists."""
    target = libmilter_endpoint(wiring.socket)
    if target is None or target.kind != "unix" or not host.exists(target.path):
        return
    owner = pf.params.get("mail_owner", "postfix") or "postfix"
    if not host.user_exists(owner):
        return  # Postfix itself refuses to start without it: `postfix check` says so
    need = Need("milter.socket", target.path, "connect")
    _check_user(owner, "Postfix's mail_owner", (need,), host, report)


def _check_optout_pipe(pf: PostfixSettings, wiring: Wiring, host: Host, report: _Report) -> None:
    learners = []
    for service in pf.by_program("pipe"):
        user, argv = pipe_argv(service.command)
        if runs_optout_learn(argv):
            learners.append((service, user, argv))
    if not learners:
        report.add(Severity.WARNING, "master.cf", "no pipe service runs `amzguard optout learn`: Amazon's opt-out"
                   " notices are not learned through Postfix (fine if a mail rule or cron job feeds them); see"
                   " docs/check-postfix.md")  # fmt: skip
    for service, user, argv in learners:
        where = f"master.cf {service.key}"
        if not argv[0].startswith("/"):
            report.add(Severity.ERROR, where, f"argv={argv[0]}: pipe(8) needs an absolute path; write the full path"
                       " of the amzguard command")  # fmt: skip
        elif not host.executable(argv[0]):
            report.add(Severity.ERROR, where, f"argv={argv[0]} is no executable file: every opt-out notice is"
                       " deferred; point argv= at the installed amzguard (e.g. /opt/amzguard/bin/amzguard)")  # fmt: skip
        if not user:
            report.add(Severity.ERROR, where, "pipe needs user=; use the milter's user")
            continue
        user = user.split(":")[0]
        # optout learn loads the whole config (secrets included): the same needs, with the config it names.
        config = config_arg(argv)
        needs = tuple(replace(n, path=config) if config and n.what == CONFIG_NEED else n for n in wiring.needs)
        if (user, needs) != (wiring.user, wiring.needs):  # else checked above already
            _check_user(user, f"the pipe user of {service.key}", needs, host, report)


def check_header_checks(pf: PostfixSettings, wiring: Wiring, host: Host, report: _Report) -> None:
    """Check 7 (issue 13): Postfix's SMTP client removes the review tag from every message it sends, the
    originals attached to bounces included (smtp_nested_header_checks)."""
    probe = f"{wiring.tag_header}: {REVIEW_PROBE_VALUE}"
    # With the channel off no secret exists, but a tag still tells outsiders what the shop's mailer does.
    severity = Severity.ERROR if wiring.review_enabled else Severity.WARNING
    shipped = "regexp:/etc/postfix/amzguard-header-checks.regexp"
    services: Iterable[Service | None] = pf.by_program("smtp") or (None,)
    for service in services:
        for parameter in ("smtp_header_checks", "smtp_nested_header_checks"):
            label = pf.source(parameter, service)
            tables = split_list(pf.get(parameter, service))
            try:
                found = next(((v, t) for t in tables if (v := host.query(_lookup_name(t), probe)) is not None), None)
            except MapError as exc:
                report.add(severity, label, f"cannot look up {wiring.tag_header!r} in it: {exc}")
                continue
            if found is None:
                report.add(severity, label, f"no rule IGNOREs the {wiring.tag_header}: header, so the review tag can"
                           f" leave the machine; add {shipped} (with /^{wiring.tag_header}:/ IGNORE)")  # fmt: skip
            elif (found[0].split() or [""])[0].upper() != "IGNORE":
                report.add(severity, label, f"{found[1]} answers {found[0]!r} for the {wiring.tag_header}: header,"
                           f" not IGNORE; list {shipped} first")  # fmt: skip


SASL_MACRO = "{auth_authen}"


def check_sasl_macro(pf: PostfixSettings, wiring: Wiring, report: _Report) -> None:
    """Check 8 (issue 12): a ``sasl_login`` recognition entry meets only what smtpd sends as
    ``{auth_authen}`` at MAIL FROM; Postfix's default ``milter_mail_macros`` has it, a shortened list does
    not, and then every review request from the logged-in tool is refused as order mail (fail closed, so an
    error: the channel silently does nothing)."""
    if not wiring.sasl_logins:
        return
    for service in pf.by_program("smtpd") or (None,):  # type: ignore[arg-type]
        macros = pf.get("milter_mail_macros", service)
        if SASL_MACRO not in macros.split():
            report.add(Severity.ERROR, pf.source("milter_mail_macros", service),
                       f"lacks {SASL_MACRO}: channels.review.recognise's sasl_login entries meet no message; "
                       f"add {SASL_MACRO} (Postfix's default list has it)")  # fmt: skip
