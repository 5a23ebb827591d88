"""The one log line written per recipient decision.

Postfix admins grep mail logs by queue id, so each line starts with it (``NOQUEUE`` before Postfix has
assigned one, as Postfix itself writes) and carries key=value fields in a fixed order. Addresses are
written as ``logging.log_addresses`` says (see privacy.py): buyer addresses are personal data.
"""

from __future__ import annotations

from .address import Address
from .policy import Decision, Mode, SubmissionPath
from .privacy import FULL_ADDRESSES, AddressPrivacy


MAX_LOGGED_ADDRESS = 256
MAX_LOGGED_FINDINGS = 1000
"""Characters of content findings per line (ten findings per rule at most, each cut at 120)."""


def bracketed(address: Address, privacy: AddressPrivacy = FULL_ADDRESSES) -> str:
    """``<address>`` for a log line or a terminal: rendered as ``privacy`` says, cut, control characters
    escaped; ``<>`` for the null sender."""
    text = privacy.render(address)
    if len(text) > MAX_LOGGED_ADDRESS:
        text = f"{text[:MAX_LOGGED_ADDRESS]}...({len(text)} chars)"
    # Control characters and undecodable octets must not forge extra log lines or break the reader.
    return f"<{_printable(text)}>"


def _printable(text: str) -> str:
    return "".join(char if char.isprintable() else f"\\x{ord(char) & 0xFF:02x}" for char in text)


def findings_field(decision: Decision) -> str:
    """`` content=[refuse foreign-link: link to ...; log incentive-wording: ...]`` or nothing: what the
    content rules found for a buyer a channel granted (evidence comes from mail data: escaped, cut)."""
    if not decision.findings:
        return ""
    text = "; ".join(f"{f.action.value} {f.text()}" for f in decision.findings)
    if len(text) > MAX_LOGGED_FINDINGS:
        text = f"{text[:MAX_LOGGED_FINDINGS]}...({len(decision.findings)} findings)"
    return f" content=[{_printable(text)}]"


def decision_line(
    queue_id: str | None,
    sender: Address,
    decision: Decision,
    path: SubmissionPath,
    stage: str,
    mode: Mode,
    privacy: AddressPrivacy = FULL_ADDRESSES,
) -> str:
    outcome = decision.outcome.value if mode is Mode.ENFORCE else f"would-{decision.outcome.value}"
    return (
        f"{queue_id or 'NOQUEUE'}: from={bracketed(sender, privacy)}"
        f" rcpt={bracketed(decision.recipient.address, privacy)}"
        f" path={path.value} stage={stage} channel={decision.channel.value}"
        f" decision={outcome} reason={decision.reason.value}{recognised_field(decision)}{findings_field(decision)}"
    )


def recognised_field(decision: Decision) -> str:
    """`` recognised_by=sasl+subject`` or nothing: how the review channel recognised the message (the tag,
    or the criteria of the ``recognise`` entry it met, strongest first), so an admin sees which way let a
    review request through and how strong that way is (docs/design.md)."""
    if not decision.recognised_by:
        return ""
    return " recognised_by=" + "+".join(by.value for by in decision.recognised_by)
