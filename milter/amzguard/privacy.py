"""How addresses appear in amzguard's log: buyer addresses are personal data (GDPR), log lines live long.

Three styles, chosen by ``logging.log_addresses``:

- ``full``: the address as it is (for debugging, or where the log is protected like the mail itself);
- ``masked`` (default): a marker prefix, the first character of the local part and the domain
  (``blacklisted-4***@amazon.fr``, ``q***@marketplace.amazon.de``): enough to see which marketplace and
  why, not enough to know the buyer;
- ``hashed``: the local part replaced by a keyed hash (HMAC-SHA-256, truncated), so the same address can be
  followed across lines and days without being readable; without the key nobody can test guesses
  against the log. The key is the admin's (config or key file), never built in.

The domain stays readable in every style: it tells the marketplace, and alone it names no person.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum

from .address import Address, format_address

HASH_HEX_DIGITS = 16
"""64 bits: collisions among one shop's buyers are practically impossible, and it stays short."""


class AddressStyle(StrEnum):
    FULL = "full"
    MASKED = "masked"
    HASHED = "hashed"


@dataclass(frozen=True, slots=True)
class AddressPrivacy:
    style: AddressStyle
    key: bytes = b""
    """The HMAC key for ``hashed`` (config checks it is set and long enough)."""
    marked_prefixes: tuple[str, ...] = ()
    """Marker prefixes stay readable: they are the shop plugin's, not the buyer's."""

    def render(self, address: Address) -> str:
        """The address as the log shows it, without angle brackets; the null sender stays empty."""
        if address.is_empty or self.style is AddressStyle.FULL:
            return "" if address.is_empty else address.text()
        prefix, rest = self._split_marker(address.local)
        if self.style is AddressStyle.MASKED:
            local = f"{prefix}{rest[:1]}***"
        else:
            local = f"{prefix}#{self.digest(address)}"
        return f"{local}@{address.domain}" if address.domain else local

    def digest(self, address: Address) -> str:
        # Case-folded, so the spellings Postfix treats alike hash alike.
        mailbox = format_address(address.local, address.domain).casefold()
        return hmac.new(self.key, mailbox.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[
            :HASH_HEX_DIGITS
        ]

    def _split_marker(self, local: str) -> tuple[str, str]:
        folded = local.casefold()
        for prefix in self.marked_prefixes:
            if folded.startswith(prefix.casefold()):
                return local[: len(prefix)], local[len(prefix) :]
        return "", local


FULL_ADDRESSES = AddressPrivacy(AddressStyle.FULL)
