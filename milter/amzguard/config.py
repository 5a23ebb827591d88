"""Configuration: one YAML file, validated completely before the milter uses any of it.

A milter that starts on a half-understood config silently passes or refuses the wrong mail, so every key
is checked: unknown keys, wrong types and bad values raise ``ConfigError`` naming the file, the key path and
what was expected.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .address import DOMAIN_NAME_RE, BuyerPatterns, normalise_domain
from .content import (
    DEFAULT_ACTIONS,
    DEFAULT_ATTACHMENT_TYPES,
    DEFAULT_LINK_DOMAINS,
    DEFAULT_MAX_ATTACHMENT_BYTES,
    DEFAULT_MAX_BYTES,
    LANGUAGES,
    REMOVABLE_RULES,
    ContentAction,
    ContentRule,
    ContentSettings,
)
from .policy import (
    CriticalChannelSettings,
    MissingOrderId,
    MixedRecipients,
    Mode,
    PolicySettings,
    Reason,
    ReplyChannelSettings,
    ReplyCheck,
    ReviewChannelSettings,
)
from .privacy import AddressPrivacy, AddressStyle

DEFAULT_CONFIG_PATH = Path("/etc/amzguard/amzguard.yml")

# Every marketplace named in Amazon's public material; subdomains (m.marketplace.amazon.co.jp) match too.
DEFAULT_RELAY_DOMAINS: tuple[str, ...] = tuple(
    f"marketplace.amazon.{tld}"
    for tld in (
        "com", "de", "co.uk", "fr", "it", "es", "nl", "se", "pl", "com.be", "co.jp", "ca", "com.mx",
        "in", "com.br", "com.au", "com.tr", "eg", "ae", "sa", "sg", "ie",
    )
)  # fmt: skip
DEFAULT_MARKED_PREFIXES: tuple[str, ...] = ("blacklisted-",)
DEFAULT_REPLY_TEXT = (
    "Amazon forbids e-mail about orders or shipping to buyers; use Seller Central (refused by amzguard)"
)
DEFAULT_TAG_HEADER = "X-Amzguard-Channel"
# Keep these in line with etc/postfix/amzguard-transport.regexp (the bounce texts of the mixed case).
DEFAULT_REASON_TEXTS: dict[Reason, str] = {
    Reason.OPTED_OUT: "The buyer opted out of unsolicited messages; Amazon allows only replies and critical"
    " messages (refused by amzguard)",
    Reason.DUPLICATE_REVIEW: "This order already had its review request; Amazon allows one per order"
    " (refused by amzguard)",
    Reason.NO_ORDER_ID: "Review request without an Amazon order id (NNN-NNNNNNN-NNNNNNN) in subject or body"
    " (refused by amzguard)",
    Reason.UNRESOLVED_ROUTE: "Amazon buyer address in a routing form whose destination is not certain"
    " (refused by amzguard)",
    # The findings follow this text in the SMTP reply and bounce ("...: foreign-link: link to ...").
    Reason.CONTENT: "Content that Amazon forbids in messages to buyers (refused by amzguard)",
}
REASON_TEXT_KEYS: dict[Reason, str] = {
    Reason.OPTED_OUT: "opted_out_text",
    Reason.DUPLICATE_REVIEW: "duplicate_review_text",
    Reason.NO_ORDER_ID: "no_order_id_text",
    Reason.UNRESOLVED_ROUTE: "unresolved_route_text",
    Reason.CONTENT: "content_text",
}
DEFAULT_STORE_PATH = Path("/var/lib/amzguard/amzguard.sqlite")
DEFAULT_METRICS_LISTEN = "127.0.0.1:9925"

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """A configuration that must not be used; the message says where and what was expected."""


@dataclass(frozen=True, slots=True)
class MilterSettings:
    socket: str
    """libmilter socket spec: ``unix:/path``, ``inet:port@host`` or ``inet6:port@host``."""
    timeout: int
    """Seconds libmilter waits on the MTA before giving up on a connection."""
    on_error: str
    """``tempfail`` or ``accept``: the answer when amzguard itself fails on a message."""
    socket_mode: int
    """Permission bits of a unix socket (group access lets Postfix in without opening it to all)."""


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """The SQLite store: opt-out register, review requests sent, buyer messages seen."""

    path: Path = DEFAULT_STORE_PATH
    on_error: str = "tempfail"
    """``tempfail`` or ``continue``: what a message that needs the store gets when it cannot be read."""
    retention_days: int = 730
    """How long review requests and buyer messages are remembered (opt-outs are kept until removed)."""


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    enabled: bool
    host: str
    port: int
    """0: any free port (tests); the real one is logged."""


@dataclass(frozen=True, slots=True)
class Config:
    source: Path | None
    milter: MilterSettings
    policy: PolicySettings
    log_level: str
    store: StoreSettings = StoreSettings()
    log_addresses: AddressPrivacy = AddressPrivacy()
    metrics: MetricsSettings = MetricsSettings(enabled=False, host="127.0.0.1", port=9925)
    content: ContentSettings = ContentSettings()


_SOCKET_RE = re.compile(
    r"""^(?:
        (?:unix|local):/.+                         # unix:/absolute/path
      | inet:\d{1,5}@[A-Za-z0-9.\-]+              # inet:port@host
      | inet6:\d{1,5}@[0-9A-Za-z.:\-\[\]]+         # inet6:port@host
    )$""",
    re.X,
)
_HEADER_NAME_RE = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'
_DOMAIN_RE = DOMAIN_NAME_RE
_SENDER_RE = re.compile(r"^[^@\s]*@[^@\s]+$")
_LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-]+)):(?P<port>\d{1,5})$")

T = TypeVar("T")


class _Section:
    """A mapping being read; remembers its key path so every error can name it."""

    def __init__(self, source: str, path: str, data: object) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: {path or 'top level'}: expected a mapping, got {_kind(data)}")
        self.source = source
        self.path = path
        self.data: Mapping[Any, Any] = data
        self.read: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, expected: str, value: object = None) -> ConfigError:
        got = f", got {value!r}" if value is not None else ""
        return ConfigError(f"{self.source}: {self._name(key)}: expected {expected}{got}")

    def section(self, key: str) -> _Section:
        self.read.add(key)
        return _Section(self.source, self._name(key), self.data.get(key))

    def get(self, key: str, default: T, expected: str, check: Callable[[Any], bool]) -> T:
        self.read.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        value = self.data[key]
        if not check(value):
            raise self.error(key, expected, value)
        return value

    def done(self) -> None:
        unknown = sorted(str(key) for key in self.data if key not in self.read)
        if unknown:
            known = ", ".join(sorted(self.read))
            raise ConfigError(f"{self.source}: {self._name(unknown[0])}: unknown key (known here: {known})")


def _kind(value: object) -> str:
    return type(value).__name__


def _is_str(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(_is_str(item) for item in value)


def _printable_ascii(value: object) -> bool:
    return isinstance(value, str) and value.isascii() and value.isprintable() and "%" not in value


def _read_token(
    review: _Section,
    base: Path | None,
    enabled: bool,
    inline_key: str = "token",
    file_key: str = "token_file",
    holds: str = "the review secret",
) -> bytes:
    """A secret given inline or in a file (the review token, the log hash key); the file is only read
    when the feature is on, so a shipped config that names a not-yet-created file still passes
    check-config while the feature is off."""
    inline = review.get(inline_key, "", "a non-empty string", _is_str)
    token_file = review.get(file_key, "", "a file path", _is_str)
    if inline and token_file:
        raise review.error(inline_key, f"either {inline_key} or {file_key}, not both")
    if token_file and enabled:
        path = Path(token_file)
        if not path.is_absolute() and base is not None:
            path = base.parent / path
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise review.error(file_key, f"a readable file ({exc.strerror}: {path})") from None
        except UnicodeDecodeError:
            raise review.error(file_key, f"a UTF-8 text file ({path})") from None
        _warn_if_world_readable(path, review._name(file_key), holds)
        inline = text
    elif inline and base is not None:
        _warn_if_world_readable(base, f"{review._name(inline_key)} (inline secret in the config file)", holds)
    token = inline.strip()
    if token and (len(token) < 16 or not token.isascii() or any(ch.isspace() for ch in token)):
        raise review.error(inline_key, "at least 16 printable ASCII characters without spaces")
    return token.encode("ascii")


def _warn_if_world_readable(path: Path, what: str, holds: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & stat.S_IROTH:
        log.warning("%s: %s is readable by every user; chmod o-r it (it holds %s)", path, what, holds)


def _parse_mode(section: _Section, key: str, default: int) -> int:
    # A string, because YAML reads an unquoted 0660 as the octal number 432 and 660 as decimal.
    raw = section.get(key, None, "a quoted octal mode such as '0660'", lambda v: isinstance(v, str))
    if raw is None:
        return default
    try:
        mode = int(raw, 8)
    except ValueError:
        raise section.error(key, "a quoted octal mode such as '0660'", raw) from None
    if not 0 <= mode <= 0o777 or mode & 0o002:
        raise section.error(key, "an octal mode without world write (e.g. '0660')", raw)
    return mode


def _allowed_senders(section: _Section) -> tuple[str, ...]:
    senders = section.get(
        "allowed_senders",
        [],
        "a list of 'user@domain' or '@domain' entries",
        lambda v: isinstance(v, list) and all(isinstance(s, str) and _SENDER_RE.match(s) for s in v),
    )
    return tuple(s.strip() for s in senders)


def _parse_reply(channels: _Section) -> ReplyChannelSettings:
    reply = channels.section("reply")
    enabled = reply.get("enabled", True, "true or false", _is_bool)
    check = reply.get("check", ReplyCheck.REFERENCE.value, "'reference' or 'thread'",
                      lambda v: v in {c.value for c in ReplyCheck})  # fmt: skip
    domains = reply.get(
        "reference_domains",
        [],
        "a list of domain names (empty: buyers.relay_domains)",
        lambda v: _is_str_list(v) and all(_DOMAIN_RE.match(normalise_domain(d)) for d in v),
    )
    prefixes = reply.get(
        "subject_prefixes", [], "a list of subject prefixes such as 'Re:'",
        lambda v: _is_str_list(v) and all(_printable_ascii(p) and len(p) <= 20 for p in v),
    )  # fmt: skip
    settings = ReplyChannelSettings(
        enabled=enabled,
        check=ReplyCheck(check),
        reference_domains=tuple(normalise_domain(d) for d in domains),
        subject_prefixes=tuple(p.strip() for p in prefixes),
        allowed_senders=_allowed_senders(reply),
    )
    reply.done()
    return settings


def _parse_critical(channels: _Section) -> CriticalChannelSettings:
    critical = channels.section("critical")
    settings = CriticalChannelSettings(
        enabled=critical.get("enabled", True, "true or false", _is_bool),
        marker=critical.get(
            "marker", "[Important]", "a subject marker of printable ASCII (max 40 characters)",
            lambda v: _printable_ascii(v) and 0 < len(v.strip()) <= 40,
        ).strip(),  # fmt: skip
        allowed_senders=_allowed_senders(critical),
    )
    critical.done()
    return settings


def _parse_store(top: _Section, base: Path | None) -> StoreSettings:
    store = top.section("store")
    raw_path = store.get("path", str(DEFAULT_STORE_PATH), "a file path", _is_str)
    path = Path(raw_path)
    if not path.is_absolute() and base is not None:
        path = base.parent / path
    settings = StoreSettings(
        path=path,
        on_error=store.get("on_error", "tempfail", "'tempfail' or 'continue'", lambda v: v in ("tempfail", "continue")),
        retention_days=store.get("retention_days", 730, "an integer number of days 1..3650",
                                 lambda v: type(v) is int and 1 <= v <= 3650),  # fmt: skip
    )
    store.done()
    return settings


def _reason_texts(refusal: _Section) -> tuple[tuple[Reason, str], ...]:
    return tuple(
        (
            reason,
            refusal.get(
                key, DEFAULT_REASON_TEXTS[reason], "one line of printable ASCII without '%' (max 400 characters)",
                lambda v: _printable_ascii(v) and 0 < len(v.strip()) <= 400,
            ).strip(),
        )
        for reason, key in REASON_TEXT_KEYS.items()
    )  # fmt: skip


def parse_config(data: object, source: str = "<config>", path: Path | None = None) -> Config:
    """Validate already-loaded YAML data into a ``Config``."""
    top = _Section(source, "", data)

    milter = top.section("milter")
    socket = milter.get(
        "socket",
        "unix:/var/spool/postfix/amzguard/amzguard.sock",
        "a libmilter socket spec (unix:/path, inet:PORT@HOST, inet6:PORT@HOST)",
        lambda v: isinstance(v, str) and bool(_SOCKET_RE.match(v)),
    )
    timeout = milter.get(
        "timeout", 600, "an integer number of seconds 1..3600", lambda v: type(v) is int and 1 <= v <= 3600
    )
    on_error = milter.get("on_error", "tempfail", "'tempfail' or 'accept'", lambda v: v in ("tempfail", "accept"))
    socket_mode = _parse_mode(milter, "socket_mode", 0o660)
    milter.done()

    buyers = top.section("buyers")
    prefixes = buyers.get(
        "marked_prefixes",
        list(DEFAULT_MARKED_PREFIXES),
        "a list of ASCII local-part prefixes",
        lambda v: _is_str_list(v) and all(p.isascii() and "@" not in p for p in v),
    )
    relay_domains = buyers.get(
        "relay_domains",
        list(DEFAULT_RELAY_DOMAINS),
        "a non-empty list of domain names",
        lambda v: _is_str_list(v) and bool(v) and all(_DOMAIN_RE.match(normalise_domain(d)) for d in v),
    )
    buyers.done()

    refusal = top.section("refusal")
    reply_text = refusal.get(
        "reply_text",
        DEFAULT_REPLY_TEXT,
        "one line of printable ASCII without '%' (max 400 characters)",
        lambda v: _printable_ascii(v) and 0 < len(v.strip()) <= 400,
    )
    mixed = refusal.get(
        "mixed_recipients",
        MixedRecipients.BOUNCE.value,
        "'bounce' or 'reject'",
        lambda v: v in {m.value for m in MixedRecipients},
    )
    bounce_domain = refusal.get(
        "bounce_domain",
        "amzguard.invalid",
        "a domain name that only your transport map routes (keep it under .invalid)",
        lambda v: isinstance(v, str) and bool(_DOMAIN_RE.match(normalise_domain(v))),
    )
    reason_texts = _reason_texts(refusal)
    refusal.done()

    channels = top.section("channels")
    review = channels.section("review")
    enabled = review.get("enabled", False, "true or false", _is_bool)
    header = review.get(
        "header", DEFAULT_TAG_HEADER, "a header field name", lambda v: isinstance(v, str) and bool(_HEADER_NAME_RE.match(v))
    )
    allowed_senders = _allowed_senders(review)
    one_per_order = review.get("one_per_order", True, "true or false", _is_bool)
    # Folded into content.rules.missing_order_id (issue 11); still read so old configs keep working.
    missing_order_id = review.get("missing_order_id", None, "'allow' or 'refuse'",
                                  lambda v: v in {m.value for m in MissingOrderId})  # fmt: skip
    missing_order_id_given = MissingOrderId(missing_order_id) if missing_order_id is not None else None
    token = _read_token(review, path, enabled)
    if enabled and not token:
        raise review.error("token", "a secret (token or token_file) when the review channel is enabled")
    review.done()
    reply = _parse_reply(channels)
    critical = _parse_critical(channels)
    channels.done()
    store = _parse_store(top, path)
    content = _parse_content(top, tuple(normalise_domain(d) for d in relay_domains), missing_order_id_given)

    mode = top.get("mode", Mode.ENFORCE.value, "'enforce' or 'monitor'", lambda v: v in {m.value for m in Mode})
    logging_section = top.section("logging")
    level = logging_section.get(
        "level", "info", "one of debug, info, warning, error", lambda v: v in ("debug", "info", "warning", "error")
    )
    address_style = AddressStyle(
        logging_section.get(
            "log_addresses",
            AddressStyle.MASKED.value,
            "one of full, masked, hashed",
            lambda v: v in {s.value for s in AddressStyle},
        )
    )
    hashed = address_style is AddressStyle.HASHED
    hash_key = _read_token(logging_section, path, hashed, "hash_key", "hash_key_file", "the log hash key")
    if hashed and not hash_key:
        raise logging_section.error("hash_key", "a key (hash_key or hash_key_file) when log_addresses is hashed")
    logging_section.done()
    metrics = _parse_metrics(top.section("metrics"))
    top.done()

    policy = PolicySettings(
        buyers=BuyerPatterns(
            marked_prefixes=tuple(prefixes),
            relay_domains=tuple(normalise_domain(d) for d in relay_domains),
        ),
        review=ReviewChannelSettings(
            enabled=enabled,
            header=header,
            token=token,
            allowed_senders=allowed_senders,
            one_per_order=one_per_order,
        ),
        reply_text=reply_text.strip(),
        mixed_recipients=MixedRecipients(mixed),
        bounce_domain=normalise_domain(bounce_domain),
        mode=Mode(mode),
        reply=reply,
        critical=critical,
        reason_texts=reason_texts,
        content=content,
    )
    return Config(
        source=path,
        milter=MilterSettings(socket=socket, timeout=timeout, on_error=on_error, socket_mode=socket_mode),
        policy=policy,
        log_level=level,
        store=store,
        log_addresses=AddressPrivacy(address_style, hash_key, policy.buyers.marked_prefixes),
        metrics=metrics,
        content=content,
    )


def _parse_metrics(section: _Section) -> MetricsSettings:
    enabled = section.get("enabled", True, "true or false", _is_bool)
    expected = "HOST:PORT (e.g. 127.0.0.1:9925, [::1]:9925)"
    listen = section.get(
        "listen", DEFAULT_METRICS_LISTEN, expected, lambda v: isinstance(v, str) and bool(_LISTEN_RE.match(v))
    )
    section.done()
    match = _LISTEN_RE.match(listen)
    assert match is not None  # checked above
    port = int(match["port"])
    if port > 65535:
        raise section.error("listen", expected, listen)
    return MetricsSettings(enabled=enabled, host=match["v6"] or match["host"], port=port)


_MIME_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/(?:\*|[a-z0-9][a-z0-9!#$&^_.+-]*)$")
OLD_MISSING_ORDER_ID: dict[MissingOrderId, ContentAction] = {
    MissingOrderId.ALLOW: ContentAction.LOG,
    MissingOrderId.REFUSE: ContentAction.REFUSE,
}
"""``channels.review.missing_order_id`` (before issue 11): ``allow`` let the request pass, which the rule's
``log`` still does (and says so); ``refuse`` is ``refuse``."""


def _parse_content(top: _Section, relay_domains: tuple[str, ...], old_missing: MissingOrderId | None) -> ContentSettings:
    """The ``content:`` section: what a message that reaches a buyer may contain (docs/content-rules.md)."""
    content = top.section("content")
    max_bytes = content.get("max_bytes", DEFAULT_MAX_BYTES, "an integer number of bytes 4096..16777216",
                            lambda v: type(v) is int and 4096 <= v <= 16 * 1024 * 1024)  # fmt: skip
    skip_quoted = content.get("skip_quoted", True, "true or false", _is_bool)

    rules = content.section("rules")
    actions: dict[ContentRule, ContentAction] = {}
    for rule in ContentRule:
        key = rule.value.replace("-", "_")
        allowed = [a.value for a in ContentAction if a is not ContentAction.REMOVE or rule in REMOVABLE_RULES]
        value = rules.get(key, None, " or ".join(f"'{a}'" for a in allowed), lambda v, ok=allowed: v in ok)
        if rule is ContentRule.MISSING_ORDER_ID and old_missing is not None:
            folded = OLD_MISSING_ORDER_ID[old_missing]
            if value is not None and ContentAction(value) is not folded:
                raise rules.error(key, f"the same as channels.review.missing_order_id ({old_missing.value} = "
                                       f"{folded.value}), or remove that old key", value)  # fmt: skip
            value = folded.value
        actions[rule] = ContentAction(value) if value is not None else DEFAULT_ACTIONS[rule]
    rules.done()

    links = content.section("links")
    domain_list = lambda v: _is_str_list(v) and all(_DOMAIN_RE.match(normalise_domain(d)) for d in v)  # noqa: E731
    allowed_domains = links.get("allowed_domains", None, "a list of domain names", domain_list)
    extra_domains = links.get("extra_domains", [], "a list of domain names", domain_list)
    links.done()

    attachments = content.section("attachments")
    max_total = attachments.get("max_total_bytes", DEFAULT_MAX_ATTACHMENT_BYTES, "an integer number of bytes",
                                lambda v: type(v) is int and 0 < v <= 2**40)  # fmt: skip
    types = attachments.get("types", list(DEFAULT_ATTACHMENT_TYPES), "a list of MIME types such as 'application/pdf' or 'image/*'",
                            lambda v: isinstance(v, list) and all(isinstance(t, str) and _MIME_TYPE_RE.match(t.strip().lower()) for t in v))  # fmt: skip
    attachments.done()

    wording = content.section("wording")
    languages = wording.get("languages", list(LANGUAGES), f"a list of languages among {', '.join(LANGUAGES)}",
                            lambda v: isinstance(v, list) and all(lang in LANGUAGES for lang in v))  # fmt: skip
    phrase_list = lambda v: _is_str_list(v) and all(len(p) <= 200 for p in v)  # noqa: E731
    phrases = wording.get("phrases", None, "a list of phrases (replaces the built-in lists)", phrase_list)
    extra_phrases = wording.get("extra_phrases", [], "a list of phrases (added to the built-in lists)", phrase_list)
    wording.done()
    content.done()

    domains = tuple(normalise_domain(d) for d in allowed_domains) if allowed_domains is not None else DEFAULT_LINK_DOMAINS
    return ContentSettings(
        actions=tuple(actions.items()),
        max_bytes=max_bytes,
        link_domains=tuple(dict.fromkeys(domains + tuple(normalise_domain(d) for d in extra_domains))),
        address_domains=relay_domains,
        attachment_types=tuple(t.strip().lower() for t in types),
        max_attachment_bytes=max_total,
        languages=tuple(dict.fromkeys(languages)),
        phrases=tuple(p.strip() for p in phrases) if phrases is not None else None,
        extra_phrases=tuple(p.strip() for p in extra_phrases),
        skip_quoted=skip_quoted,
    )


def load_config(path: Path | str) -> Config:
    """Read and validate a config file; every failure is a ``ConfigError`` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    return parse_config(data, source=str(path), path=path.resolve())


def config_path_from_env(explicit: str | None) -> Path:
    """``-c FILE`` first, then ``AMZGUARD_CONFIG``, then the packaged default location."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("AMZGUARD_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH
