"""Amazon's daily volume limit for proactive messages (``limits.proactive_per_day``, off by default).

Amazon caps how many proactive messages (review requests, critical messages) a seller may send to buyers
per marketplace and day; seller tools report "about 5 x average daily orders + 600" (amazon-facts.md), and
Amazon refuses what goes over it. amzguard counts the proactive messages it lets through per marketplace
and UTC day, and a message that would take a marketplace over the limit is tempfailed (451), not refused:
Postfix keeps it and sends it on a later day, when the count has started again.

Pure: the settings, which decisions count, their marketplace, the UTC day. The store keeps the counts
(table ``proactive_count``) and decides atomically, in the transaction that records the review request
(store/base.py ``SqlStore.record``), whether a message still fits; the adapter tempfails it when not.

What counts, one per buyer (Amazon counts messages per buyer, so a message to three buyers is three):
a buyer decision that delivers (``deliver`` or ``deliver-unmarked``) through a proactive channel, in a
message whose plan accepts it (the transaction computes records only then), so refused, opted-out,
duplicate and content-refused messages never count; replies never count (Amazon does not limit them). A
buyer whose delivered address has no Amazon marketplace (a marked address on a shop's own domain) is not
counted: that message never passes Amazon.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..address import Recipient, recipient_keys
from .model import PROACTIVE_CHANNELS, Decision, Outcome, ProactiveSent, StoreRecord
from .restriction import ALL, marketplace_of, valid_marketplace

MAX_LIMIT = 10_000_000
"""Far above any real limit (5 x 1,000,000 orders a day + 600); a typo with more digits is an error."""


class LimitError(ValueError):
    """A ``limits.proactive_per_day`` value amzguard cannot use; ``where`` names the marketplace (or "")."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.where = where


@dataclass(frozen=True, slots=True)
class LimitSettings:
    per_day: tuple[tuple[str, int], ...] = ()
    """(marketplace, limit) pairs, one per marketplace; ``*``: each marketplace not listed. Empty: off."""

    @property
    def enabled(self) -> bool:
        return bool(self.per_day)

    def bucket(self, marketplace: str) -> str | None:
        """The configured entry that limits ``marketplace`` (itself, or ``*``); None: unlimited."""
        names = dict(self.per_day)
        if marketplace in names:
            return marketplace
        return ALL if ALL in names else None

    def limit_for(self, marketplace: str) -> int | None:
        """Proactive messages allowed per UTC day to ``marketplace``'s buyers; None: unlimited."""
        bucket = self.bucket(marketplace)
        return dict(self.per_day)[bucket] if bucket is not None else None


NO_LIMITS = LimitSettings()


def _positive(value: object, where: str) -> int:
    # YAML's true is an int to Python: refused, as are 0, negatives, floats and strings.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_LIMIT:
        raise LimitError(f"expected a positive integer (at most {MAX_LIMIT}), got {value!r}", where)
    return value


def parse_limits(value: object) -> LimitSettings:
    """The settings from the YAML value: None or ``{}`` (off), an integer (that limit for each marketplace
    separately, as ``{"*": N}``), or a mapping marketplace -> integer. Raises ``LimitError``."""
    if value is None:
        return NO_LIMITS
    if not isinstance(value, Mapping):
        return LimitSettings(((ALL, _positive(value, "")),))
    pairs: dict[str, int] = {}
    for raw, limit in value.items():
        if not isinstance(raw, str):
            # YAML reads an unquoted `no:` or `on:` as a boolean, `1:` as a number.
            raise LimitError(f"expected marketplace names (de, co.uk, com, '*') as keys, got {raw!r}; quote it", str(raw))
        name = valid_marketplace(raw)
        if name is None:
            raise LimitError(f"expected marketplace names (de, co.uk, com, '*') as keys, got {raw!r}", raw)
        if name in pairs:
            raise LimitError(f"expected each marketplace once, got {name} twice", raw)
        pairs[name] = _positive(limit, raw)
    return LimitSettings(tuple(sorted(pairs.items())))


def utc_day(unix_time: float) -> str:
    """The UTC day of a unix time as ``YYYY-MM-DD``: Amazon's day is not the shop's local one, and one
    fixed zone lets every host of a fleet count the same day."""
    return datetime.datetime.fromtimestamp(unix_time, datetime.timezone.utc).date().isoformat()


def marketplace_delivered(decision: Decision) -> str | None:
    """The marketplace a delivered buyer decision reaches: the unmarked address's for a buyer delivered
    unmarked, else the judged address's (``marketplace.amazon.de`` -> ``de``, ``amazon.fr`` -> ``fr``)."""
    recipient: Recipient = decision.recipient
    if decision.outcome is Outcome.DELIVER_UNMARKED and recipient.unmarked:
        return marketplace_of(recipient.unmarked.rpartition("@")[2])
    return marketplace_of(recipient.address.domain)


def counted(settings: LimitSettings, decisions: Iterable[Decision], marked_prefixes: tuple[str, ...],
            capped: bool = True) -> tuple[ProactiveSent, ...]:  # fmt: skip
    """The count records of a message the plan accepts: per limited marketplace, how many buyers it
    reaches through a proactive channel. ``capped`` False: counted without a limit (monitor mode after
    the limit was found reached: the message is delivered, so Amazon counts it)."""
    if not settings.enabled:
        return ()
    buyers: dict[str, set[str]] = {}
    for decision in decisions:
        if decision.refused or decision.channel not in PROACTIVE_CHANNELS or not decision.recipient.is_buyer:
            continue
        marketplace = marketplace_delivered(decision)
        if marketplace is None or settings.limit_for(marketplace) is None:
            continue
        keys = recipient_keys(decision.recipient, marked_prefixes)[:1] or (decision.recipient.address.text(),)
        buyers.setdefault(marketplace, set()).update(keys)
    return tuple(ProactiveSent(marketplace, len(keys), settings.limit_for(marketplace) if capped else None)
                 for marketplace, keys in sorted(buyers.items()))  # fmt: skip


def uncapped(records: Iterable[StoreRecord]) -> tuple[StoreRecord, ...]:
    """The same records with every count's limit removed (monitor mode: see ``counted``)."""
    return tuple(ProactiveSent(r.marketplace, r.count, None) if isinstance(r, ProactiveSent) else r for r in records)
