"""The shop's mail as the benchmark sends it: a fixed mix of streams, each one ``smtp-source`` process.

``smtp-source`` sends one sender/recipient pair per process and no header of our choosing except
through a prepared message file (``-F``), so the mix is made of concurrent processes, one per kind of
mail, with sessions and messages split in fixed shares. Every stream sends the same ~1 KB message
layout (same header count), so the streams differ only in envelope and, for the review requests, in
the tag header.

All addresses are made up (``example.com``, made-up buyer numbers).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

REVIEW_TOKEN = "bench-review-token-9Kq2Zt7Wm4"
REVIEW_SENDER = "review@shop.test"
SHOP_SENDER = "shop@shop.test"
TAG_HEADER = "X-Amzguard-Channel"
MESSAGE_SIZE = 1024
"""Approximate size of each message file (headers and body), in bytes."""


class Filter(enum.Enum):
    """What the Postfix under test does about buyer mail."""

    NONE = "none"
    """No filter (plain Postfix, or the do-nothing milter): every message is relayed."""
    AMZGUARD = "amzguard"
    """Buyer mail refused, tagged review requests delivered (marker removed, tag deleted)."""
    ERROR_TRANSPORT = "error-transport"
    """The transport-map recipe: every buyer address refused, review requests included."""


class Kind(enum.Enum):
    ALLOWED = "allowed"
    BUYER = "buyer"
    REVIEW = "review"


@dataclass(frozen=True)
class Stream:
    """One ``smtp-source`` process of the mix."""

    name: str
    kind: Kind
    sender: str
    recipient: str
    numbered: bool
    """Pass ``-N`` (smtp-source prefixes a sequence number to the recipient, so each one is new to
    Postfix's resolver cache). Not for marked addresses: the number would hide the marker."""
    share: int
    """Sessions and messages per ten of the total."""
    template: str = "plain"
    """The message: ``plain`` (~1 KB of text) or ``review-html`` (a clean multipart/alternative review
    request with links to Amazon and a carrier, which the content rules read and pass)."""

    def delivered_with(self, filter_: Filter) -> bool:
        if self.kind is Kind.ALLOWED or filter_ is Filter.NONE:
            return True
        return self.kind is Kind.REVIEW and filter_ is Filter.AMZGUARD


MIX: tuple[Stream, ...] = (
    Stream("order", Kind.ALLOWED, SHOP_SENDER, "customer@example.com", numbered=True, share=7),
    Stream("buyer-relay", Kind.BUYER, SHOP_SENDER, "buyer@marketplace.amazon.de", numbered=True, share=1),
    Stream("buyer-marked", Kind.BUYER, SHOP_SENDER, "blacklisted-40417@amazon.fr", numbered=False, share=1),
    Stream("review", Kind.REVIEW, REVIEW_SENDER, "blacklisted-40418@amazon.fr", numbered=False, share=1),
)
STANDARD_MIX = MIX
REVIEW_MIX: tuple[Stream, ...] = (
    Stream("order", Kind.ALLOWED, SHOP_SENDER, "customer@example.com", numbered=True, share=2),
    Stream("buyer-relay", Kind.BUYER, SHOP_SENDER, "buyer@marketplace.amazon.de", numbered=True, share=1),
    Stream("review", Kind.REVIEW, REVIEW_SENDER, "review@marketplace.amazon.de", numbered=True, share=7,
           template="review-html"),
)  # fmt: skip
"""Review-heavy: most messages are review requests that a channel grants, so the content rules read and
judge their body; compared with the content rules on and off (issue 11, item 4)."""
MIXES: dict[str, tuple[Stream, ...]] = {"standard": STANDARD_MIX, "review": REVIEW_MIX}
MIX_NAME = "standard"
SHARE_TOTAL = sum(stream.share for stream in MIX)


def select_mix(name: str) -> None:
    """Make ``MIXES[name]`` the mix every function here (and bench.pipeline) uses."""
    global MIX, SHARE_TOTAL, MIX_NAME
    MIX = MIXES[name]
    MIX_NAME = name
    SHARE_TOTAL = sum(stream.share for stream in MIX)


def describe_mix() -> str:
    parts = []
    for stream in MIX:
        numbered = ", numbered (-N)" if stream.numbered else ""
        parts.append(
            f"  {stream.share * 100 // SHARE_TOTAL:3d}% {stream.name:<13} {stream.kind.value:<8} "
            f"from <{stream.sender}> to <{stream.recipient}>{numbered}"
        )
    return "\n".join(parts)


def split(total: int, stream: Stream) -> int:
    """This stream's part of ``total`` (sessions or messages); at least one."""
    return max(1, round(total * stream.share / SHARE_TOTAL))


REVIEW_TEXT = """Hello,

thank you for your order 302-0000000-0000000. If you would like to share your experience with the
product, you can leave a review on Amazon:
https://www.amazon.de/review/review-your-purchases/?asin=B0BENCH001

Your parcel was sent with DHL:
https://www.dhl.de/de/privatkunden/pakete-empfangen/verfolgen.html?piececode=00340434161234567890

Kind regards
Example Shop
"""
REVIEW_HTML = """<html><body>
<p>Hello,</p>
<p>thank you for your order 302-0000000-0000000. If you would like to share your experience with the
product, you can leave a review on
<a href="https://www.amazon.de/review/review-your-purchases/?asin=B0BENCH001">Amazon</a>.</p>
<p>Your parcel was sent with
<a href="https://www.dhl.de/de/privatkunden/pakete-empfangen/verfolgen.html?piececode=00340434161234567890">DHL</a>.</p>
<p>Kind regards<br>Example Shop</p>
</body></html>
"""


def review_html_body() -> tuple[list[str], str]:
    """Extra header fields and the body of the ``review-html`` template (~2 KB, multipart/alternative)."""
    headers = ['Content-Type: multipart/alternative; boundary="bench-alt"']
    body = (
        "--bench-alt\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
        f"{REVIEW_TEXT}\n--bench-alt\nContent-Type: text/html; charset=utf-8\n"
        f"Content-Transfer-Encoding: 8bit\n\n{REVIEW_HTML}\n--bench-alt--\n"
    )
    return headers, body


def message_text(stream: Stream) -> str:
    """The message file for ``smtp-source -F`` (LF line ends; smtp-source sends CRLF and dot-stuffs)."""
    if stream.template == "review-html":
        content_headers, body = review_html_body()
        headers = [
            f"From: Example Shop <{stream.sender}>",
            f"To: <{stream.recipient}>",
            "Subject: How did we do? Order 302-0000000-0000000",
            "Date: Sun, 22 Nov 2026 10:00:00 +0000",
            f"Message-ID: <bench-{stream.name}@shop.test>",
            "MIME-Version: 1.0",
            *content_headers,
            f"{TAG_HEADER}: review {REVIEW_TOKEN}",
        ]
        return "\n".join(headers) + "\n\n" + body
    headers = [
        f"From: Example Shop <{stream.sender}>",
        f"To: <{stream.recipient}>",
        "Subject: Your order 302-0000000-0000000 has shipped" if stream.kind is not Kind.REVIEW
        else "Subject: How did we do? Order 302-0000000-0000000",
        "Date: Sun, 22 Nov 2026 10:00:00 +0000",
        f"Message-ID: <bench-{stream.name}@shop.test>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    if stream.kind is Kind.REVIEW:
        headers.append(f"{TAG_HEADER}: review {REVIEW_TOKEN}")
    head = "\n".join(headers) + "\n\n"
    line = "Thank you for your order. This line is filler so the message is about one kilobyte.\n"
    body = ""
    while len(head) + len(body) + len(line) <= MESSAGE_SIZE:
        body += line
    return head + body


def write_message_files(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for stream in MIX:
        path = directory / f"{stream.name}.eml"
        path.write_text(message_text(stream))
        files[stream.name] = path
    return files


ERROR_TRANSPORT_REGEXP = r"""# The admin's alternative to amzguard: refuse buyer addresses in Postfix itself.
/^blacklisted-/                           error:5.7.1 Amazon buyer address (marked), not sent
/@(.+\.)?marketplace\.amazon\.[a-z.]+$/   error:5.7.1 Amazon buyer relay address, not sent
"""


def amzguard_sections(content: bool = True) -> dict[str, object]:
    """amzguard's config for the benchmark: review channel on, only the review mailer may use it;
    ``content``: the content rules at their defaults, else every rule off.

    With ``allowed_senders`` set, the shop's order mail to a buyer is refused at RCPT (as is the
    transport-map recipe's), so neither setup receives the refused message's data.
    """
    only_review_sender = {"allowed_senders": [REVIEW_SENDER]}
    return {
        "channels": {
            # smtp-source repeats one prepared message, so every review request names the same order:
            # one-per-order would refuse all but the first. The store is still asked (opt-outs) and written.
            "review": {"enabled": True, "token": REVIEW_TOKEN, "one_per_order": False, **only_review_sender},
            "reply": only_review_sender,
            "critical": only_review_sender,
        },
        "logging": {"level": "info"},
        **({} if content else {"content": {"rules": {rule: "off" for rule in CONTENT_RULE_KEYS}}}),
    }


CONTENT_RULE_KEYS = (
    "list_unsubscribe", "unsubscribe_link", "tracking_pixel", "http_image", "foreign_link", "email_address",
    "phone_number", "emoji", "attachment_size", "attachment_type", "missing_order_id", "incentive_wording",
)  # fmt: skip
"""Every ``content.rules`` key (a test checks this against amzguard.content.ContentRule)."""
