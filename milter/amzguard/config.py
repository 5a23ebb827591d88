"""Configuration: one YAML file, validated completely before the milter uses any of it.

A milter that starts on a half-understood config silently passes or refuses the wrong mail, so every key
is checked: unknown keys, wrong types and bad values raise ``ConfigError`` naming the file, the key path and
what was expected. Defaults, checks and those texts come from the key table (config_keys.py); this module
turns checked values into settings and does what needs the file system (secret files, relative paths).
The settings classes have no defaults of their own, so no second default can disagree with the table.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .address import BuyerPatterns, normalise_domain
from .config_keys import BY_PATH, LISTEN_RE, RECOGNISE_CRITERIA, RELAY_DOMAINS, SENDER_RE, Key
from .content import DEFAULT_LINK_DOMAINS, ContentAction, ContentRule, ContentSettings
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
from .policy.limits import LimitError, LimitSettings, parse_limits
from .policy.senders import parse_approved, unapproved
from .policy.recognise import CriterionError, RecogniseEntry, SubjectPattern, client_network
from .privacy import AddressPrivacy, AddressStyle

DEFAULT_CONFIG_PATH = Path("/etc/amzguard/amzguard.yml")

# Named defaults for code and tests that need them; the values live in the key table (config_keys.py).
DEFAULT_RELAY_DOMAINS: tuple[str, ...] = RELAY_DOMAINS
DEFAULT_MARKED_PREFIXES: tuple[str, ...] = BY_PATH["buyers.marked_prefixes"].default
DEFAULT_REPLY_TEXT: str = BY_PATH["refusal.reply_text"].default
DEFAULT_TAG_HEADER: str = BY_PATH["channels.review.header"].default
# Keep these in line with etc/postfix/amzguard-transport.regexp (the bounce texts of the mixed case).
REASON_TEXT_KEYS: dict[Reason, str] = {
    Reason.OPTED_OUT: "opted_out_text",
    Reason.DUPLICATE_REVIEW: "duplicate_review_text",
    Reason.NO_ORDER_ID: "no_order_id_text",
    Reason.UNRESOLVED_ROUTE: "unresolved_route_text",
    # The findings follow this text in the SMTP reply and bounce ("...: foreign-link: link to ...").
    Reason.CONTENT: "content_text",
    Reason.MESSAGING_RESTRICTED: "messaging_restricted_text",
    Reason.SENDER_NOT_APPROVED: "sender_not_approved_text",
}
DEFAULT_REASON_TEXTS: dict[Reason, str] = {
    reason: BY_PATH[f"refusal.{key}"].default for reason, key in REASON_TEXT_KEYS.items()
}
DEFAULT_STORE_PATH = Path(BY_PATH["store.path"].default)
DEFAULT_METRICS_LISTEN: str = BY_PATH["metrics.listen"].default

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
    """The store (SQLite file or PostgreSQL database): opt-out register, review requests sent, buyer messages seen."""

    path: Path
    on_error: str
    """``tempfail`` or ``continue``: what a message that needs the store gets when it cannot be read."""
    retention_days: int
    """How long review requests and buyer messages are remembered (opt-outs are kept until removed)."""
    url: str | None = None
    """PostgreSQL connection string (libpq URI or keywords); None: SQLite at ``path``."""
    password: str | None = None
    """From ``store.password_file``."""
    connect_timeout: int = 3
    statement_timeout: int = 2
    pool_size: int = 4

    @property
    def backend(self) -> str:
        return "postgresql" if self.url else "sqlite"


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    enabled: bool
    host: str
    port: int
    """0: any free port (tests); the real one is logged."""


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str
    target: str
    """``stderr``, ``syslog`` or ``journal`` (log_output.py)."""
    syslog_socket: str
    journal_socket: str


@dataclass(frozen=True, slots=True)
class LearnSettings:
    keep_unknown: Path | None
    """Where ``optout learn`` keeps mail it could not learn from; None: logged and dropped."""


@dataclass(frozen=True, slots=True)
class RestrictionSettings:
    """Amazon's messaging restrictions (policy/restriction.py): how long one holds, how a notice reads."""

    days: int
    notice_phrases: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SecretFile:
    """A secret file the running service must be able to read (``check-config --user`` checks it)."""

    key: str
    path: Path


@dataclass(frozen=True, slots=True)
class Config:
    source: Path | None
    milter: MilterSettings
    policy: PolicySettings
    logging: LoggingSettings
    store: StoreSettings
    log_addresses: AddressPrivacy
    metrics: MetricsSettings
    learn: LearnSettings
    content: ContentSettings
    """The same as ``policy.content`` (the content rules judge what the policy's channels grant)."""
    secret_files: tuple[SecretFile, ...] = ()
    """The secret files this configuration read (only those of features that are on)."""
    restriction: RestrictionSettings = RestrictionSettings(30, ())

    @property
    def log_level(self) -> str:
        return self.logging.level


T = TypeVar("T")


class _Section:
    """A mapping being read; remembers its key path so every error can name it.

    Keys are read with ``value(name)``, which takes the default, the check and the "expected" text from the
    key table (config_keys.py). ``seen`` collects every key path read, so a test can compare the keys the
    parser knows with the table's.
    """

    def __init__(self, source: str, path: str, data: object, seen: set[str] | None = None) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: {path or 'top level'}: expected a mapping, got {_kind(data)}")
        self.source = source
        self.path = path
        self.data: Mapping[Any, Any] = data
        self.read: set[str] = set()
        self.seen: set[str] = set() if seen is None else seen

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, expected: str, value: object = None) -> ConfigError:
        got = f", got {value!r}" if value is not None else ""
        return ConfigError(f"{self.source}: {self._name(key)}: expected {expected}{got}")

    def section(self, key: str) -> _Section:
        self.read.add(key)
        return _Section(self.source, self._name(key), self.data.get(key), self.seen)

    def given(self, key: str) -> bool:
        """Whether the file sets ``key`` (not just leaves it to its default)."""
        return self.data.get(key) is not None

    def value(self, key: str) -> Any:
        """The value of ``key`` checked against its table entry, or the table's default."""
        spec: Key = BY_PATH[self._name(key)]
        return self.get(key, spec.default, spec.expected, spec.check)

    def get(self, key: str, default: T, expected: str, check: Callable[[Any], bool]) -> T:
        """Read a key with its own default and check; prefer ``value`` (the key table)."""
        self.read.add(key)
        self.seen.add(self._name(key))
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


def _relative(raw: str, base: Path | None) -> Path:
    path = Path(raw)
    return base.parent / path if not path.is_absolute() and base is not None else path


def _read_token(
    section: _Section,
    base: Path | None,
    enabled: bool,
    secrets: list[SecretFile],
    inline_key: str = "token",
    file_key: str = "token_file",
    holds: str = "the review secret",
    missing: str = "a secret (token or token_file) when the review channel is enabled",
) -> bytes:
    """A secret given inline or in a file (the review token, the log hash key).

    The file is read only when the feature is on, so a shipped config that names a not-yet-created file
    still passes check-config while the feature is off. An inline secret wins over the default file; both
    written in the file is an error.
    """
    inline = section.value(inline_key) or ""
    token_file = section.value(file_key)
    if inline and section.given(file_key):
        raise section.error(inline_key, f"either {inline_key} or {file_key}, not both")
    if enabled and not inline:
        path = _relative(token_file, base)
        try:
            inline = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            if section.given(file_key):
                raise section.error(file_key, f"a readable file ({exc.strerror}: {path})") from None
            raise section.error(inline_key, f"{missing}; default {file_key} {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise section.error(file_key, f"a UTF-8 text file ({path})") from None
        _warn_if_world_readable(path, section._name(file_key), holds)
        secrets.append(SecretFile(section._name(file_key), path))
        if not inline:
            raise section.error(inline_key, f"{missing}; {path} is empty")
    elif inline and base is not None:
        _warn_if_world_readable(base, f"{section._name(inline_key)} (inline secret in the config file)", holds)
    token = inline.strip()
    if token and (len(token) < 16 or not token.isascii() or any(ch.isspace() for ch in token)):
        raise section.error(inline_key, "at least 16 printable ASCII characters without spaces")
    return token.encode("ascii")


def _warn_if_world_readable(path: Path, what: str, holds: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & stat.S_IROTH:
        log.warning("%s: %s is readable by every user; chmod o-r it (it holds %s)", path, what, holds)


def _parse_mode(section: _Section, key: str) -> int:
    # A string, because YAML reads an unquoted 0660 as the octal number 432 and 660 as decimal.
    raw = section.value(key)
    try:
        mode = int(raw, 8)
    except ValueError:
        raise section.error(key, BY_PATH[section._name(key)].expected, raw) from None
    if not 0 <= mode <= 0o777 or mode & 0o002:
        raise section.error(key, "an octal mode without world write (e.g. '0660')", raw)
    return mode


def _allowed_senders(section: _Section) -> tuple[str, ...]:
    return tuple(s.strip() for s in section.value("allowed_senders"))


def _parse_review(
    channels: _Section, base: Path | None, secrets: list[SecretFile]
) -> tuple[ReviewChannelSettings, MissingOrderId | None]:
    review = channels.section("review")
    enabled = review.value("enabled")
    recognise = _recognise_entries(review)
    # With recognise entries the tag is optional: no secret named and no default file means the tag is off.
    default_file = _relative(review.value("token_file"), base)
    no_secret = not (review.given("token") or review.given("token_file") or default_file.exists())
    settings = ReviewChannelSettings(
        enabled=enabled,
        header=review.value("header"),
        token=_read_token(review, base, enabled and not (recognise and no_secret), secrets),
        allowed_senders=_allowed_senders(review),
        one_per_order=review.value("one_per_order"),
        recognise=recognise,
    )
    old_missing = _old_missing_order_id(review)
    review.done()
    return settings, old_missing


def _recognise_entries(review: _Section) -> tuple[RecogniseEntry, ...]:
    """``channels.review.recognise``: each entry's criteria checked and compiled now (a bad subject glob or
    network is a ConfigError naming ``recognise[N].key``, never a surprise at the first message)."""
    entries = []
    for index, item in enumerate(review.value("recognise")):
        where = f"recognise[{index}]"
        unknown = sorted(str(key) for key in item if key not in RECOGNISE_CRITERIA)
        if unknown:
            raise ConfigError(f"{review.source}: {review._name(where)}.{unknown[0]}: unknown key (known here: "
                              f"{', '.join(RECOGNISE_CRITERIA)})")  # fmt: skip
        given: dict[str, str] = {}
        for key in RECOGNISE_CRITERIA:
            value = item.get(key)
            if value is not None and not (isinstance(value, str) and value.strip()):
                raise review.error(f"{where}.{key}", "a non-empty string", value)
            if value is not None:
                given[key] = value.strip()
        sender = given.get("sender")
        if sender is not None and not SENDER_RE.match(sender):
            raise review.error(f"{where}.sender", "'user@domain' or '@domain'", sender)
        login = given.get("sasl_login")
        if login is not None and not login.isprintable():
            raise review.error(f"{where}.sasl_login", "a printable login name", login)
        try:
            client = client_network(given["client"]) if "client" in given else None
        except CriterionError as exc:
            raise review.error(f"{where}.client", str(exc), given["client"]) from None
        try:
            subject = SubjectPattern.compile(given["subject"]) if "subject" in given else None
        except CriterionError as exc:
            raise review.error(f"{where}.subject", str(exc), given["subject"]) from None
        try:
            entries.append(RecogniseEntry(sender=sender, sasl_login=login, client=client, subject=subject))
        except CriterionError as exc:
            raise review.error(where, str(exc), item) from None
    return tuple(entries)


def _old_missing_order_id(review: _Section) -> MissingOrderId | None:
    """``channels.review.missing_order_id``, folded into ``content.rules.missing_order_id`` (issue 11);
    None unless the file sets it (old configs keep working, new ones need not name it)."""
    value = review.value("missing_order_id")
    return MissingOrderId(value) if review.given("missing_order_id") else None


OLD_MISSING_ORDER_ID: dict[MissingOrderId, ContentAction] = {
    MissingOrderId.ALLOW: ContentAction.LOG,
    MissingOrderId.REFUSE: ContentAction.REFUSE,
}
"""``channels.review.missing_order_id`` (before issue 11): ``allow`` let the request pass, which the rule's
``log`` still does (and says so); ``refuse`` is ``refuse``."""


def _parse_content(top: _Section, relay_domains: tuple[str, ...], old_missing: MissingOrderId | None) -> ContentSettings:
    """The ``content:`` section: what a message that reaches a buyer may contain (docs/content-rules.md)."""
    content = top.section("content")
    max_bytes = content.value("max_bytes")
    skip_quoted = content.value("skip_quoted")

    rules = content.section("rules")
    actions: dict[ContentRule, ContentAction] = {}
    for rule in ContentRule:
        key = rule.value.replace("-", "_")
        value = rules.value(key)
        if rule is ContentRule.MISSING_ORDER_ID and old_missing is not None:
            folded = OLD_MISSING_ORDER_ID[old_missing]
            if rules.given(key) and ContentAction(value) is not folded:
                raise rules.error(key, f"the same as channels.review.missing_order_id ({old_missing.value} = "
                                       f"{folded.value}), or remove that old key", value)  # fmt: skip
            value = folded.value
        actions[rule] = ContentAction(value)
    rules.done()

    links = content.section("links")
    allowed_domains = links.value("allowed_domains")
    extra_domains = links.value("extra_domains")
    links.done()

    attachments = content.section("attachments")
    max_total = attachments.value("max_total_bytes")
    types = attachments.value("types")
    attachments.done()

    wording = content.section("wording")
    languages = wording.value("languages")
    phrases = wording.value("phrases")
    extra_phrases = wording.value("extra_phrases")
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


def _parse_reply(channels: _Section) -> ReplyChannelSettings:
    reply = channels.section("reply")
    settings = ReplyChannelSettings(
        enabled=reply.value("enabled"),
        check=ReplyCheck(reply.value("check")),
        reference_domains=tuple(normalise_domain(d) for d in reply.value("reference_domains")),
        subject_prefixes=tuple(p.strip() for p in reply.value("subject_prefixes")),
        allowed_senders=_allowed_senders(reply),
    )
    reply.done()
    return settings


def _parse_critical(channels: _Section) -> CriticalChannelSettings:
    critical = channels.section("critical")
    markers = tuple(dict.fromkeys(m.strip() for m in critical.value("markers")))
    old = critical.value("marker")
    if critical.given("marker"):
        # The old single marker (before issue 12) keeps its meaning: exactly that marker, no [Wichtig].
        if critical.given("markers"):
            raise critical.error("marker", "not set beside channels.critical.markers (use markers only)", old)
        markers = (old.strip(),)
    settings = CriticalChannelSettings(
        enabled=critical.value("enabled"),
        markers=markers,
        allowed_senders=_allowed_senders(critical),
    )
    critical.done()
    return settings


def _parse_store(top: _Section, base: Path | None, secrets: list[SecretFile]) -> StoreSettings:
    store = top.section("store")
    password = None
    if store.value("password_file") is not None:
        path = _relative(store.value("password_file"), base)
        try:
            password = path.read_text(encoding="utf-8").split("\n", 1)[0].strip()
        except OSError as exc:
            raise store.error("password_file", f"a readable file ({exc.strerror}: {path})") from None
        except UnicodeDecodeError:
            raise store.error("password_file", f"a UTF-8 text file ({path})") from None
        _warn_if_world_readable(path, "store.password_file", "the database password")
        secrets.append(SecretFile("store.password_file", path))
    settings = StoreSettings(
        path=_relative(store.value("path"), base),
        on_error=store.value("on_error"),
        retention_days=store.value("retention_days"),
        url=store.value("url"),
        password=password,
        connect_timeout=store.value("connect_timeout"),
        statement_timeout=store.value("statement_timeout"),
        pool_size=store.value("pool_size"),
    )
    store.done()
    return settings


def _parse_logging(top: _Section, base: Path | None, prefixes: tuple[str, ...], secrets: list[SecretFile]
                   ) -> tuple[LoggingSettings, AddressPrivacy]:  # fmt: skip
    section = top.section("logging")
    settings = LoggingSettings(
        level=section.value("level"),
        target=section.value("target"),
        syslog_socket=section.value("syslog_socket"),
        journal_socket=section.value("journal_socket"),
    )
    style = AddressStyle(section.value("log_addresses"))
    hashed = style is AddressStyle.HASHED
    key = _read_token(section, base, hashed, secrets, "hash_key", "hash_key_file", "the log hash key",
                      "a key (hash_key or hash_key_file) when log_addresses is hashed")  # fmt: skip
    section.done()
    return settings, AddressPrivacy(style, key, prefixes)


def _parse_metrics(top: _Section) -> MetricsSettings:
    section = top.section("metrics")
    enabled = section.value("enabled")
    match = LISTEN_RE.match(section.value("listen"))
    assert match is not None  # checked by the key table
    section.done()
    return MetricsSettings(enabled=enabled, host=match["v6"] or match["host"], port=int(match["port"]))


def _parse_learn(top: _Section) -> LearnSettings:
    optout = top.section("optout")
    learn = optout.section("learn")
    keep = learn.value("keep_unknown")
    learn.done()
    optout.done()
    return LearnSettings(keep_unknown=Path(keep) if keep else None)


def _parse_restriction(top: _Section) -> RestrictionSettings:
    section = top.section("restriction")
    days, phrases = section.value("days"), section.value("notice_phrases")
    section.done()
    return RestrictionSettings(days=days, notice_phrases=tuple(" ".join(p.casefold().split()) for p in phrases))


def _parse_limits(top: _Section) -> LimitSettings:
    section = top.section("limits")
    value = section.value("proactive_per_day")
    section.done()
    try:
        return parse_limits(value)
    except LimitError as exc:
        where = f" (at {exc.where!r})" if exc.where else ""
        raise ConfigError(f"{section.source}: limits.proactive_per_day: {exc}{where}") from None


def _reason_texts(refusal: _Section) -> tuple[tuple[Reason, str], ...]:
    return tuple((reason, refusal.value(key).strip()) for reason, key in REASON_TEXT_KEYS.items())


def parse_config(data: object, source: str = "<config>", path: Path | None = None) -> Config:
    """Validate already-loaded YAML data into a ``Config``."""
    return _parse(data, source, path, set())


def parsed_key_paths() -> set[str]:
    """Every key path the parser reads (a test compares them with the key table)."""
    seen: set[str] = set()
    _parse({}, "<config>", None, seen)
    return seen


def _parse(data: object, source: str, path: Path | None, seen: set[str]) -> Config:
    top = _Section(source, "", data, seen)
    secrets: list[SecretFile] = []

    milter_section = top.section("milter")
    milter = MilterSettings(
        socket=milter_section.value("socket"),
        timeout=milter_section.value("timeout"),
        on_error=milter_section.value("on_error"),
        socket_mode=_parse_mode(milter_section, "socket_mode"),
    )
    milter_section.done()

    buyers_section = top.section("buyers")
    buyers = BuyerPatterns(
        marked_prefixes=tuple(buyers_section.value("marked_prefixes")),
        relay_domains=tuple(normalise_domain(d) for d in buyers_section.value("relay_domains")),
    )
    approved_senders = parse_approved(buyers_section.value("approved_senders"))
    buyers_section.done()

    refusal = top.section("refusal")
    reply_text = refusal.value("reply_text").strip()
    mixed = MixedRecipients(refusal.value("mixed_recipients"))
    bounce_domain = normalise_domain(refusal.value("bounce_domain"))
    reason_texts = _reason_texts(refusal)
    refusal.done()

    channels = top.section("channels")
    review, old_missing = _parse_review(channels, path, secrets)
    reply = _parse_reply(channels)
    critical = _parse_critical(channels)
    channels.done()
    store = _parse_store(top, path, secrets)
    content = _parse_content(top, buyers.relay_domains, old_missing)

    mode = Mode(top.value("mode"))
    logging_settings, log_addresses = _parse_logging(top, path, buyers.marked_prefixes, secrets)
    metrics = _parse_metrics(top)
    learn = _parse_learn(top)
    restriction = _parse_restriction(top)
    limits = _parse_limits(top)
    top.done()

    policy = PolicySettings(
        buyers=buyers,
        review=review,
        reply_text=reply_text,
        mixed_recipients=mixed,
        bounce_domain=bounce_domain,
        mode=mode,
        reply=reply,
        critical=critical,
        reason_texts=reason_texts,
        content=content,
        limits=limits,
        approved_senders=approved_senders,
    )
    _warn_unapproved(source, policy)
    return Config(
        source=path,
        milter=milter,
        policy=policy,
        logging=logging_settings,
        store=store,
        log_addresses=log_addresses,
        metrics=metrics,
        learn=learn,
        content=content,
        secret_files=tuple(secrets),
        restriction=restriction,
    )


def _warn_unapproved(source: str, policy: PolicySettings) -> None:
    """A channel sender that buyers.approved_senders does not approve anywhere: every message it sends to a
    relay buyer is refused (sender-not-approved), which its channel entry cannot have meant."""
    named = [(f"channels.{name}.allowed_senders", settings.allowed_senders)
             for name, settings in (("review", policy.review), ("reply", policy.reply), ("critical", policy.critical))]
    named += [(f"channels.review.recognise[{i}].sender", (entry.sender,))
              for i, entry in enumerate(policy.review.recognise) if entry.sender]  # fmt: skip
    for key, senders in named:
        for sender in unapproved(policy.approved_senders, senders):
            log.warning("%s: %s: %s is in no list of buyers.approved_senders: its mail to buyers' relay addresses "
                        "is refused (sender-not-approved)", source, key, sender)  # fmt: skip


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
