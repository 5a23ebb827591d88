"""Every configuration key, once: its path, type, default, allowed values and documentation.

This table is the one place a default lives. ``config.py`` reads each key through it (default, type check,
the "expected ..." text of the error), ``etc/amzguard.yml`` is checked against it by a test, and the
``amzguard.yml(5)`` man page and ``docs/configuration.md`` are generated from it::

    python -m amzguard.config_keys --man        > man/amzguard.yml.5
    python -m amzguard.config_keys --markdown   > docs/configuration.md

(``make docs`` runs both; a test fails when a committed page differs from what the table gives.)

Adding a key is one entry below plus the line in ``config.py`` that reads it (``section.value("name")``) and
its line in ``etc/amzguard.yml``; see CONTRIBUTING.md.

Nothing here does I/O: a check sees only the YAML value. What needs the file system (secret files, relative
paths) or several keys at once (``token`` or ``token_file``) stays in ``config.py``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .address import DOMAIN_NAME_RE, normalise_domain
from .content import (
    DEFAULT_ACTIONS,
    DEFAULT_ATTACHMENT_TYPES,
    DEFAULT_MAX_ATTACHMENT_BYTES,
    DEFAULT_MAX_BYTES,
    LANGUAGES,
    REMOVABLE_RULES,
    ContentAction,
    ContentRule,
)
from .policy import MissingOrderId, MixedRecipients, Mode, ReplyCheck
from .policy.restriction import NOTICE_TEXT, valid_marketplace
from .privacy import AddressStyle

# -- checks on YAML values -------------------------------------------------------------------------------

SOCKET_RE = re.compile(
    r"""^(?:
        (?:unix|local):/.+                         # unix:/absolute/path
      | inet:\d{1,5}@[A-Za-z0-9.\-]+              # inet:port@host
      | inet6:\d{1,5}@[0-9A-Za-z.:\-\[\]]+         # inet6:port@host
    )$""",
    re.X,
)
HEADER_NAME_RE = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'
SENDER_RE = re.compile(r"^[^@\s]*@[^@\s]+$")
LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-]+)):(?P<port>\d{1,5})$")


def is_str(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def is_bool(value: object) -> bool:
    return isinstance(value, bool)


def is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(is_str(item) for item in value)


def printable_ascii(value: object) -> bool:
    return isinstance(value, str) and value.isascii() and value.isprintable() and "%" not in value


def is_domain(value: object) -> bool:
    return isinstance(value, str) and bool(DOMAIN_NAME_RE.match(normalise_domain(value)))


def is_absolute_path(value: object) -> bool:
    return is_str(value) and str(value).startswith("/")


def _one_line(limit: int) -> Callable[[object], bool]:
    return lambda v: printable_ascii(v) and 0 < len(str(v).strip()) <= limit


def _domains(v: object) -> bool:
    return is_str_list(v) and all(is_domain(d) for d in v)  # type: ignore[union-attr]


def _senders(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) and SENDER_RE.match(s) for s in v)


def _approved_senders(v: object) -> bool:
    # A list (every marketplace) or a mapping of marketplace names (de, co.uk, amazon.fr, *) to lists.
    if isinstance(v, dict):
        return all(isinstance(k, str) and valid_marketplace(k) and _senders(e) for k, e in v.items())
    return _senders(v)


# -- the table -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    path: str
    """Dotted key path: ``channels.review.enabled``."""
    type: str
    """The type as the docs name it: boolean, integer, string, list of strings, one of ..."""
    default: Any
    """What a missing key (or ``~``) means, as a YAML value; ``None``: unset (no value)."""
    doc: str
    """One line: what the key decides."""
    expected: str
    """What an error says was expected: ``channels.review.enabled: expected true or false, got 'yes'``."""
    check: Callable[[Any], bool]
    allowed: tuple[str, ...] = ()
    """The values of an enumerated key, in the order the docs list them."""
    details: str = ""
    """Longer documentation (the man page and docs/configuration.md), plain text."""
    shown_default: str | None = None
    """How the docs show a default too long to print (``all Amazon marketplaces``)."""

    @property
    def section(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]


_MIME_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/(?:\*|[a-z0-9][a-z0-9!#$&^_.+-]*)$")


def _mime_types(v: object) -> bool:
    return isinstance(v, list | tuple) and all(isinstance(t, str) and _MIME_TYPE_RE.match(t.strip().lower()) for t in v)


def _phrases(v: object) -> bool:
    return is_str_list(v) and all(len(p) <= 200 for p in v)  # type: ignore[union-attr]


def boolean(path: str, default: bool, doc: str, details: str = "") -> Key:
    return Key(path, "boolean", default, doc, "true or false", is_bool, details=details)


def choice(path: str, default: str, allowed: type[StrEnum] | Sequence[str], doc: str, details: str = "") -> Key:
    values = tuple(m.value for m in allowed) if isinstance(allowed, type) else tuple(allowed)
    expected = " or ".join(f"'{v}'" for v in values) if len(values) == 2 else "one of " + ", ".join(values)
    return Key(path, "one of " + ", ".join(values), default, doc, expected, lambda v: v in values, values, details)


def integer(path: str, default: int, low: int, high: int, unit: str, doc: str, details: str = "") -> Key:
    return Key(path, f"integer {low}..{high}", default, doc, f"an integer number of {unit} {low}..{high}",
               lambda v: type(v) is int and low <= v <= high, details=details)  # fmt: skip


def text(path: str, default: str | None, doc: str, expected: str = "a non-empty string",
         check: Callable[[Any], bool] = is_str, details: str = "", type_: str = "string") -> Key:  # fmt: skip
    return Key(path, type_, default, doc, expected, check, details=details)


def line(path: str, default: str, doc: str, details: str = "") -> Key:
    return text(path, default, doc, "one line of printable ASCII without '%' (max 400 characters)",
                _one_line(400), details)  # fmt: skip


def senders(path: str, doc: str = "If set, only these envelope senders may use the channel.") -> Key:
    return Key(path, "list of strings", (), doc, "a list of 'user@domain' or '@domain' entries", _senders,
               details="Entries are user@domain or @domain (any user of that domain). With such a list on "
               "every enabled channel, mail from other senders to a buyer is refused already at RCPT TO on "
               "the SMTP path.")  # fmt: skip


CRITICAL_MARKERS = ("[Important]", "[Wichtig]")
"""The default critical markers: Amazon's US help names the first, its German help page the second."""


RECOGNISE_CRITERIA = ("sender", "sasl_login", "client", "subject")
"""The criteria of one ``channels.review.recognise`` entry (policy/recognise.py)."""


def _recognise_entries(v: object) -> bool:
    # The shape only; config.py compiles each criterion and names the entry and key of a bad one.
    return isinstance(v, list) and all(isinstance(entry, dict) for entry in v)


# Every marketplace named in Amazon's public material; subdomains (m.marketplace.amazon.co.jp) match too.
RELAY_DOMAINS: tuple[str, ...] = tuple(
    f"marketplace.amazon.{tld}"
    for tld in (
        "com", "de", "co.uk", "fr", "it", "es", "nl", "se", "pl", "com.be", "co.jp", "ca", "com.mx",
        "in", "com.br", "com.au", "com.tr", "eg", "ae", "sa", "sg", "ie",
    )
)  # fmt: skip

KEYS: tuple[Key, ...] = (
    choice("mode", "enforce", Mode, "enforce: refuse and rewrite as decided; monitor: decide, log and count "
           "only, the mail flow is unchanged.",
           "In monitor mode decisions are logged as decision=would-refuse and counted with mode=\"monitor\"; "
           "nothing is refused, rewritten or deleted (the review tag leaves the MTA), and an internal error "
           "accepts the message."),  # fmt: skip
    # milter
    text("milter.socket", "unix:/var/spool/postfix/amzguard/amzguard.sock",
         "libmilter socket spec: unix:/path, inet:PORT@HOST or inet6:PORT@HOST.",
         "a libmilter socket spec (unix:/path, inet:PORT@HOST, inet6:PORT@HOST)",
         lambda v: isinstance(v, str) and bool(SOCKET_RE.match(v)),
         "Debian's Postfix runs smtpd and cleanup chrooted in /var/spool/postfix, so the default socket lives "
         "there and main.cf names it relative to the queue directory: unix:amzguard/amzguard.sock. Note that "
         "Postfix writes inet:HOST:PORT where libmilter writes inet:PORT@HOST. Needs a restart to change."),
    text("milter.socket_mode", "0660", "Permission bits of a unix socket, as a quoted octal string.",
         "a quoted octal mode such as '0660'", lambda v: isinstance(v, str),
         "Quoted, because YAML reads an unquoted 0660 as the number 432. Group access lets the postfix user "
         "connect; a world-writable mode is refused. Needs a restart to change.", "quoted octal string"),
    integer("milter.timeout", 600, 1, 3600, "seconds", "Seconds libmilter waits on the MTA before dropping a "
            "connection.", "Needs a restart to change."),  # fmt: skip
    choice("milter.on_error", "tempfail", ("tempfail", "accept"),
           "Answer when amzguard itself fails on a message: tempfail (the MTA retries later) or accept."),
    # buyers
    Key("buyers.marked_prefixes", "list of strings", ("blacklisted-",),
        "Local-part prefixes that shop plugins (magnalister) put on imported Amazon buyer addresses.",
        "a list of ASCII local-part prefixes",
        lambda v: is_str_list(v) and all(p.isascii() and "@" not in p for p in v),
        details="Compared case-insensitively. A marked address is a buyer whatever its domain; a channel that "
        "grants the message removes the prefix from the envelope recipient."),
    Key("buyers.relay_domains", "list of strings", RELAY_DOMAINS,
        "Amazon buyer relay domains; subdomains match too (m.marketplace.amazon.co.jp).",
        "a non-empty list of domain names", lambda v: _domains(v) and bool(v),
        details="The default lists marketplace.amazon. followed by com, de, co.uk, fr, it, es, nl, se, pl, "
        "com.be, co.jp, ca, com.mx, in, com.br, com.au, com.tr, eg, ae, sa, sg and ie. Matching is "
        "label-aligned: x@notmarketplace.amazon.de is no buyer.", shown_default="all Amazon marketplaces"),
    Key("buyers.approved_senders", "list or mapping", (),
        "Senders approved in Seller Central's Messaging Permissions: mail to relay addresses from others is "
        "refused (sender-not-approved); empty: not checked.",
        "a list of 'user@domain' or '@domain' entries, or a mapping of marketplaces (de, co.uk, *) to such lists",
        _approved_senders,
        details="Amazon delivers mail to a buyer's relay address only from the account's registered address or "
        "one approved in Seller Central > Settings > Notification preferences > Messaging Permissions, per "
        "marketplace. A list approves its entries for every marketplace; a mapping per marketplace "
        "(de: [...], co.uk: [...], and * for every marketplace), a marketplace with no entries of its own and "
        "no * entries is not checked. For a buyer at a relay domain whose message a channel grants, the "
        "envelope sender and the From: address must both be listed (user@domain, or @domain for any user "
        "of that domain), because Amazon does not say which of them it checks: list a mailer's bounce "
        "address too when it differs from its From:. A message without exactly one readable From: is not "
        "approved. On the SMTP path an unapproved envelope sender is refused already at RCPT TO. A channel's "
        "allowed_senders entry or a recognise entry's sender that no list approves is logged as a warning when "
        "the config is read (check-config shows it)."),
    # refusal
    line("refusal.reply_text",
         "Amazon forbids e-mail about orders or shipping to buyers; use Seller Central (refused by amzguard)",
         "Text of the 550 5.7.1 reply and of the bounce, after the refused addresses.",
         "Printable ASCII without '%' (libmilter drops such replies), at most 400 characters."),
    choice("refusal.mixed_recipients", "bounce", MixedRecipients,
           "A message to buyers and to other recipients: bounce the buyers only, or reject the whole message.",
           "bounce: the others get it; each refused buyer is swapped for LOCAL=DOMAIN@REASON.BOUNCE_DOMAIN, "
           "which Postfix's error: transport bounces to the sender (install etc/postfix/amzguard-transport."
           "regexp). SMTP path only: on the sendmail(1) path a delete cannot be certain, so such a message is "
           "refused whole there. reject: the whole message is refused; needs nothing in Postfix, but nobody gets it."),
    text("refusal.bounce_domain", "amzguard.invalid", "Domain of the stand-in addresses of bounced buyers.",
         "a domain name that only your transport map routes (keep it under .invalid)", is_domain,
         "Only your transport map may route it; keep it under .invalid.", "domain name"),
    line("refusal.opted_out_text", "The buyer opted out of unsolicited messages; Amazon allows only replies "
         "and critical messages (refused by amzguard)",
         "Refusal text for a review request to a buyer in the opt-out register.",
         "Keep it in line with the opted-out line of the transport map."),  # fmt: skip
    line("refusal.duplicate_review_text", "This order already had its review request; Amazon allows one per "
         "order (refused by amzguard)", "Refusal text for a second review request for one order."),  # fmt: skip
    line("refusal.no_order_id_text", "Review request without an Amazon order id (NNN-NNNNNNN-NNNNNNN) in "
         "subject or body (refused by amzguard)",
         "Refusal text for a review request without order id (channels.review.missing_order_id: refuse)."),
    line("refusal.content_text", "Content that Amazon forbids in messages to buyers (refused by amzguard)",
         "Refusal text for a message a channel grants whose content a refusing rule found (the findings "
         "follow it)."),
    line("refusal.unresolved_route_text", "Amazon buyer address in a routing form whose destination is not "
         "certain (refused by amzguard)",
         "Refusal text for a buyer address whose routed destination amzguard cannot be sure of (%, !, @ in "
         "the local part without Postfix's resolved {rcpt_addr})."),
    line("refusal.messaging_restricted_text", "Amazon restricted this account from proactive messages to this "
         "marketplace; replies still work (refused by amzguard)",
         "Refusal text for a review request or critical message while a messaging restriction holds."),
    line("refusal.sender_not_approved_text", "Sender not approved for Amazon buyers; approve it in Seller Central "
         "> Settings > Notification preferences > Messaging Permissions and in buyers.approved_senders (refused "
         "by amzguard)", "Refusal text for mail to a buyer from a sender not in buyers.approved_senders."),
    # channels.review
    boolean("channels.review.enabled", False, "The review channel: tagged review requests may reach buyers.",
            "The shop's review-request mailer adds \"X-Amzguard-Channel: review SECRET\"; such mail may reach "
            "buyers (a marker prefix is removed), and the header is deleted from every message amzguard accepts or "
            "refuses in enforce mode. "
            "Needs a secret (token_file or token)."),
    text("channels.review.header", "X-Amzguard-Channel", "The tag header; its value is: review SECRET.",
         "a header field name", lambda v: isinstance(v, str) and bool(HEADER_NAME_RE.match(v)),
         type_="header field name"),
    text("channels.review.token_file", "/etc/amzguard/review-token",
         "File holding the review secret (relative paths: to the config file).", "a file path", is_str,
         "Read only when the channel is enabled, and only when token is not set. At least 16 printable ASCII "
         "characters without spaces. A world-readable file gives a warning. Create it with: "
         "install -m 0640 -o root -g amzguard /dev/null /etc/amzguard/review-token; "
         "head -c 24 /dev/urandom | base64 > /etc/amzguard/review-token", "file path"),
    text("channels.review.token", None, "The review secret inline, instead of token_file.",
         "a non-empty string", is_str,
         "At least 16 printable ASCII characters without spaces. Setting both token and token_file is an "
         "error. A secret in a world-readable config file gives a warning."),
    senders("channels.review.allowed_senders"),
    boolean("channels.review.one_per_order", True, "Refuse a second review request for an order.",
            "The order id (NNN-NNNNNNN-NNNNNNN) is read from the subject, else from the decoded body (first "
            "256 KiB). Needs the store."),
    # channels.review.recognise (issue 12): review requests recognised without the tag
    Key("channels.review.recognise", "list of mappings", (),
        "Review requests recognised without the tag: entries of sender, sasl_login, client, subject.",
        "a list of mappings with the keys " + ", ".join(RECOGNISE_CRITERIA), _recognise_entries,
        details="Each entry names one or more criteria, all of which must hold: sender (user@domain or @domain, "
        "the envelope sender), sasl_login (the SMTP AUTH login, Postfix's {auth_authen}, compared exactly), "
        "client (the SMTP client's address or CIDR network, IPv4 or IPv6; never met on the sendmail(1) path), "
        "subject (a glob over the whole decoded subject, any letter case: * any text, ? one character, [...] "
        "a set). An entry without criterion is an error. Recognised mail is judged as tagged mail is "
        "(opt-out register, one per order, content rules); allowed_senders still applies. With entries the "
        "secret is optional: without token and token_file (and no default file) the tag is off. How strong "
        "each criterion is: docs/design.md."),
    choice("channels.review.missing_order_id", "allow", MissingOrderId,
           "Old form of content.rules.missing_order_id (allow = log, refuse = refuse); read only when set.",
           "Folded into content.rules.missing_order_id (issue 11), which also covers critical messages; "
           "setting both to different actions is an error."),
    # channels.reply
    boolean("channels.reply.enabled", True, "The reply channel: replies in a thread the buyer started pass, "
            "also to buyers who opted out."),  # fmt: skip
    choice("channels.reply.check", "reference", ReplyCheck, "What makes a message a reply.",
           "reference: In-Reply-To or References names a Message-ID in one of reference_domains (any "
           "subdomain); stops order mail that is no reply, not software that writes a fake reference. "
           "thread: In-Reply-To or References names a Message-ID that amzguard recorded on a message this "
           "same buyer sent to the shop through this MTA within store.retention_days."),
    Key("channels.reply.reference_domains", "list of strings", (),
        "Message-ID domains of Amazon's buyer messages; empty: buyers.relay_domains.",
        "a list of domain names (empty: buyers.relay_domains)", _domains),
    Key("channels.reply.subject_prefixes", "list of strings", (),
        "If set, the subject must also start with one of these (any letter case), e.g. [\"Re:\", \"AW:\"].",
        "a list of subject prefixes such as 'Re:'",
        lambda v: is_str_list(v) and all(printable_ascii(p) and len(p) <= 20 for p in v)),
    senders("channels.reply.allowed_senders"),
    # channels.critical
    boolean("channels.critical.enabled", True, "The critical channel: a subject with the marker passes, also "
            "to buyers who opted out.",
            "For delivery scheduling, address problems, customisation questions. Amazon has retired this "
            "override in some marketplaces and watches for overuse: switch it off if yours did."),  # fmt: skip
    Key("channels.critical.markers", "list of strings", CRITICAL_MARKERS, "Subject markers (brackets included): "
        "any of them, any letter case, anywhere in the subject.",
        "a non-empty list of subject markers of printable ASCII (max 40 characters each)",
        lambda v: isinstance(v, list) and bool(v) and all(_one_line(40)(m) for m in v),
        details="[Important] is Amazon's marker in its US help, [Wichtig] the one its German help page names "
        "(docs/amazon-facts.md); list only those your marketplaces accept."),
    text("channels.critical.marker", None, "Old form of channels.critical.markers (one marker); read only when "
         "set.", "a subject marker of printable ASCII (max 40 characters)", _one_line(40),
         "Means markers: [MARKER], so a file that names one marker keeps exactly that one; setting both keys "
         "is an error."),
    senders("channels.critical.allowed_senders"),
    # store
    text("store.path", "/var/lib/amzguard/amzguard.sqlite", "The SQLite store: opt-out register, review "
         "requests sent, buyer messages seen (relative paths: to the config file).", "a file path", is_str,
         "Its directory must be writable by the milter's user and by the pipe user of optout learn "
         "(amzguard check-config --user amzguard checks it).", "file path"),  # fmt: skip
    choice("store.on_error", "tempfail", ("tempfail", "continue"),
           "A message that needs the store when it cannot be used: tempfail, or continue as if nobody opted out.",
           "tempfail: the MTA retries, nothing is lost. continue: judged as if nobody had opted out and no "
           "order had a review request; logged."),
    integer("store.retention_days", 730, 1, 3650, "days", "Days to remember review requests and buyer "
            "messages (opt-outs stay until removed)."),  # fmt: skip
    text("store.url", None, "PostgreSQL instead of SQLite: a libpq URI (postgresql://…) or keyword string "
         "(host=… dbname=…) of the database every MTA of a fleet shares.",
         "a libpq URI (postgresql://…) or keyword string (host=… dbname=…)",
         lambda v: is_str(v) and (str(v).startswith(("postgresql://", "postgres://")) or "=" in str(v)),
         "Unset: the SQLite file store.path. sslmode, sslrootcert, target_session_attrs and every other libpq "
         "parameter pass through; libpq's passfile (~/.pgpass, PGPASSFILE) and service file (service=NAME) "
         "work as usual. A multi-host URL (postgresql://db1,db2/amzguard) gets target_session_attrs=read-write "
         "unless it sets it. The schema is made by amzguard store init (see docs/fleet.md). Needs psycopg 3 "
         "and psycopg_pool (Debian: python3-psycopg python3-psycopg-pool).", "libpq connection string"),
    text("store.password_file", None, "File holding the PostgreSQL password (first line), instead of one in "
         "store.url or libpq's passfile.", "a file path", is_str, type_="file path"),
    integer("store.connect_timeout", 3, 2, 10, "seconds", "Seconds to wait for a PostgreSQL connection "
            "(libpq connect_timeout and the pool's wait).",
            "Kept well below Postfix's milter_command_timeout (30 s): a message waits at most two connect and "
            "two statement timeouts for the store, then gets store.on_error."),  # fmt: skip
    integer("store.statement_timeout", 2, 1, 10, "seconds", "Seconds one PostgreSQL statement may run "
            "(the server's statement_timeout)."),  # fmt: skip
    integer("store.pool_size", 4, 1, 64, "connections", "Most PostgreSQL connections one milter process "
            "keeps.", "The milter asks the store only under its review lock, so a few connections serve any "
            "number of libmilter threads; the metrics scrape and the purge take one each."),  # fmt: skip
    # logging
    choice("logging.level", "info", ("debug", "info", "warning", "error"),
           "Lowest level logged; info logs one line per recipient decision."),
    choice("logging.target", "stderr", ("stderr", "syslog", "journal"), "Where log lines go.",
           "stderr: standard error (make run; under systemd the journal, with each line's priority). "
           "syslog: facility mail, tag amzguard, over logging.syslog_socket, so decisions sit beside "
           "Postfix's lines in mail.log. journal: systemd's native journal protocol over "
           "logging.journal_socket, with PRIORITY, SYSLOG_IDENTIFIER=amzguard and SYSLOG_FACILITY=mail. "
           "When the socket cannot be reached a line goes to standard error instead."),
    text("logging.syslog_socket", "/dev/log", "Unix datagram socket of the syslog daemon "
         "(logging.target: syslog).", "an absolute socket path", is_absolute_path, type_="file path"),
    text("logging.journal_socket", "/run/systemd/journal/socket", "Socket of systemd-journald's native "
         "protocol (logging.target: journal).", "an absolute socket path", is_absolute_path, type_="file path"),
    choice("logging.log_addresses", "masked", AddressStyle, "How buyer and sender addresses appear in "
           "decision lines (they are personal data).",
           "full: as they are. masked: marker prefix, first character and domain "
           "(blacklisted-4***@amazon.fr). hashed: marker prefix, keyed hash and domain "
           "(blacklisted-#3f9a1c2b7d4e5f60@amazon.fr): one buyer can be followed across lines without being "
           "named; needs hash_key_file or hash_key."),  # fmt: skip
    text("logging.hash_key_file", "/etc/amzguard/log-hash-key", "File holding the key for log_addresses: "
         "hashed (relative paths: to the config file).", "a file path", is_str,
         "Read only when log_addresses is hashed and hash_key is not set; at least 16 characters. Create it "
         "with: install -m 0640 -o root -g amzguard /dev/null /etc/amzguard/log-hash-key; "
         "head -c 24 /dev/urandom | base64 > /etc/amzguard/log-hash-key", "file path"),  # fmt: skip
    text("logging.hash_key", None, "The hash key inline, instead of hash_key_file.", "a non-empty string",
         is_str),
    # metrics
    boolean("metrics.enabled", True, "Serve Prometheus metrics on http://LISTEN/metrics.",
            "There is no authentication: keep it on loopback or firewall it. Needs a restart to change."),
    text("metrics.listen", "127.0.0.1:9925", "HOST:PORT or [IPv6]:PORT of the metrics endpoint.",
         "HOST:PORT (e.g. 127.0.0.1:9925, [::1]:9925)",
         lambda v: isinstance(v, str) and bool(LISTEN_RE.match(v)) and int(LISTEN_RE.match(v)["port"]) <= 65535,
         "Port 0 picks any free port (the bound one is logged). Needs a restart to change.", "HOST:PORT"),
    # optout
    text("optout.learn.keep_unknown", None, "Directory where optout learn keeps mail it could not learn "
         "from; unset: logged and dropped.", "an absolute directory path", is_absolute_path,
         "Mail to the learn address that is no opt-out notice, or a notice naming no buyer amzguard knows, "
         "is never bounced (that would send backscatter to Amazon): it is logged, accepted (exit 0) and, "
         "with this key, written to a new file in this directory (like a maildir's new/), which must be "
         "writable by the pipe transport's user.", "directory path"),
    # restriction (issue 12 item 4; policy/restriction.py)
    integer("restriction.days", 30, 1, 365, "days", "Days a restriction learned from Amazon's notice (or "
            "added without --days) holds.", "Tools report 5 to 30 days; amzguard restriction clear ends it early."),
    Key("restriction.notice_phrases", "list of strings", (NOTICE_TEXT,), "Phrases that make a message to the "
        "learn address a restriction notice (any letter case, white space runs as one space).",
        "a non-empty list of phrases (max 200 characters each)",
        lambda v: is_str_list(v) and bool(v) and all(0 < len(p.strip()) <= 200 for p in v),  # type: ignore[union-attr]
        "The default is Amazon's known English note; add the wording of other languages as notices arrive."),
    # limits (issue 12 item 7; policy/limits.py)
    Key("limits.proactive_per_day", "integer or mapping", None, "Proactive messages (review requests, critical "
        "messages) let through per UTC day and marketplace; over it they are tempfailed (451) and sent on a "
        "later day. Unset: no limit.",
        "a positive integer, or a mapping of marketplaces (de, co.uk, com, '*') to positive integers",
        lambda v: (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, dict),
        details="An integer is the limit of each marketplace separately; a mapping gives one per marketplace, '*' "
        "(quoted) for every marketplace not listed, and a marketplace neither listed nor covered by '*' is "
        "not limited. Amazon does not publish its limit; seller tools report about 5 x average daily orders "
        "+ 600 proactive messages a day. A message over the limit waits in Postfix's queue (the whole "
        "message, shop copies included) and is tried again until the next UTC day lets it through; one "
        "counted message per buyer; replies are never counted. Needs the store.",
        shown_default="(unset: no limit)"),
    # content (issue 11; docs/content-rules.md)
    integer("content.max_bytes", DEFAULT_MAX_BYTES, 4096, 16 * 1024 * 1024, "bytes",
            "Decoded text read per message for the content rules (attachments are measured, not read)."),
    boolean("content.skip_quoted", True, "Leave quoted text (the buyer's own message in a reply) unjudged."),
    *(choice(f"content.rules.{rule.value.replace('-', '_')}", DEFAULT_ACTIONS[rule].value,
             [a.value for a in ContentAction if a is not ContentAction.REMOVE or rule in REMOVABLE_RULES],
             f"What a {rule.value} finding does in a message a channel grants to a buyer.")
      for rule in ContentRule),
    Key("content.links.allowed_domains", "list of strings", None,
        "Hosts links may point to (subdomains too); unset: Amazon's sites and carriers' tracking pages.",
        "a list of domain names", _domains, shown_default="Amazon's sites and about 50 carriers"),
    Key("content.links.extra_domains", "list of strings", (), "Hosts added to the allow-list (the shop's own).",
        "a list of domain names", _domains),
    integer("content.attachments.max_total_bytes", DEFAULT_MAX_ATTACHMENT_BYTES, 1, 2**40, "bytes",
            "Largest total size of a message's attachments (Amazon: 10 MB)."),
    Key("content.attachments.types", "list of strings", DEFAULT_ATTACHMENT_TYPES,
        "MIME types attachments may have ('image/*' allowed).",
        "a list of MIME types such as 'application/pdf' or 'image/*'", _mime_types),
    Key("content.wording.languages", "list of strings", LANGUAGES,
        "Languages whose incentive/review-manipulation phrases are searched.",
        f"a list of languages among {', '.join(LANGUAGES)}",
        lambda v: isinstance(v, list | tuple) and all(lang in LANGUAGES for lang in v)),
    Key("content.wording.phrases", "list of strings", None, "Phrases that replace the built-in lists.",
        "a list of phrases (replaces the built-in lists)", _phrases),
    Key("content.wording.extra_phrases", "list of strings", (), "Phrases added to the built-in lists.",
        "a list of phrases (added to the built-in lists)", _phrases),
)

BY_PATH: dict[str, Key] = {key.path: key for key in KEYS}


def default(path: str) -> Any:
    return BY_PATH[path].default


def sections() -> list[str]:
    """Section paths in table order (``""`` is the top level)."""
    return list(dict.fromkeys(key.section for key in KEYS))


# -- rendering -------------------------------------------------------------------------------------------


def yaml_value(value: Any) -> str:
    """A default as it is written in the YAML file."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(value) + "]"
    if isinstance(value, str) and (value[:1] in "[{'\"!&*#|>%@`" or value.isdigit() or ": " in value):
        return f'"{value}"'
    return str(value)


def shown(key: Key) -> str:
    return key.shown_default if key.shown_default is not None else yaml_value(key.default)


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in ".'" else text


def man_page() -> str:
    """``amzguard.yml(5)``: every key, generated from ``KEYS`` (no version in it: a release does not make
    the committed page stale)."""
    out = [
        '.\\" Generated by "python -m amzguard.config_keys --man" from milter/amzguard/config_keys.py;',
        '.\\" edit the table there, then run "make docs".',
        '.TH AMZGUARD.YML 5 "" "amzguard" "File Formats"',
        ".nh",
        ".ad l",
        ".SH NAME",
        "amzguard.yml \\- configuration file of the amzguard milter",
        ".SH SYNOPSIS",
        ".B /etc/amzguard/amzguard.yml",
        ".SH DESCRIPTION",
        "One YAML file configures",
        ".BR amzguard (8).",
        "Every key is optional; a missing key (or",
        ".BR ~ )",
        "takes the default shown below. Unknown keys, wrong types and bad values are errors that name the "
        "file, the key path and what was expected, so a typo never falls back to a default silently:",
        ".PP",
        ".RS",
        ".EX",
        "amzguard: configuration error: /etc/amzguard/amzguard.yml:",
        "  channels.review.enabled: expected true or false, got 'yes'",
        ".EE",
        ".RE",
        ".PP",
        "Check a file with",
        ".BR \"amzguard check\\-config \\-c FILE\" ;",
        "add",
        ".B \"\\-\\-user amzguard\"",
        "to check that the service user can read its files and write the store.",
        "A reload (SIGUSR1) applies every key except the milter socket, its mode and timeout and the metrics "
        "endpoint, which need a restart.",
        ".SH KEYS",
    ]
    for section in sections():
        out.append(f".SS {section or 'Top level'}")
        for key in (k for k in KEYS if k.section == section):
            out += [".TP", f"\\fB{_roff(key.path)}\\fR (\\fI{_roff(key.type)}\\fR, default \\fB{_roff(shown(key))}\\fR)"]
            out.append(_roff(key.doc))
            if key.details:
                out += [".IP", _roff(key.details)]
    out += [
        ".SH FILES",
        ".TP",
        ".I /etc/amzguard/amzguard.yml",
        "the configuration (also $AMZGUARD_CONFIG, or",
        ".BR \\-c ).",
        ".TP",
        ".I /etc/amzguard/review\\-token",
        "the review channel's secret (channels.review.token_file).",
        ".TP",
        ".I /var/lib/amzguard/amzguard.sqlite",
        "the store (store.path).",
        ".SH SEE ALSO",
        ".BR amzguard (8),",
        ".BR postconf (5),",
        ".BR pipe (8)",
        "",
    ]
    return "\n".join(out)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """``docs/configuration.md``: the key table and the longer notes, generated from ``KEYS``."""
    out = [
        "<!-- Generated by `python -m amzguard.config_keys --markdown` from milter/amzguard/config_keys.py;",
        "     edit the table there, then run `make docs`. -->",
        "# Configuration reference",
        "",
        "amzguard reads one YAML file (`-c FILE`, else `$AMZGUARD_CONFIG`, else "
        "`/etc/amzguard/amzguard.yml`). Every key is optional; unknown keys, wrong types and bad values stop "
        "amzguard with an error naming the file, the key path and what was expected. The shipped "
        "`etc/amzguard.yml` shows every key with its default. `amzguard check-config [--user amzguard]` "
        "checks a file; `man amzguard.yml` shows this page at the terminal.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for key in KEYS:
        out.append(f"| `{key.path}` | {_md(key.type)} | `{_md(shown(key))}` | {_md(key.doc)} |")
    out += ["", "## Notes", ""]
    for key in KEYS:
        if key.details:
            out += [f"- **`{key.path}`**: {_md(key.details)}"]
    out.append("")
    return "\n".join(out)


def main(argv: Iterable[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--man"]:
        sys.stdout.write(man_page())
    elif args == ["--markdown"]:
        sys.stdout.write(markdown())
    else:
        print("usage: python -m amzguard.config_keys --man | --markdown", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
