"""Finding an Amazon order id (``NNN-NNNNNNN-NNNNNNN``) in a message's subject or body.

Amazon allows one review request per order, so the review channel must know which order a request is
about; the shop's mailer writes the id into the subject or the text. Bodies arrive transfer-encoded
(quoted-printable, base64, multipart), so the body is decoded the way a mail reader would before the
id is searched (by the content package's scanner); undecodable parts are searched as raw text. Pure
code: no I/O.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from email.header import decode_header, make_header
from email.message import Message

ORDER_ID_RE = re.compile(r"(?<![0-9])([0-9]{3})-([0-9]{7})-([0-9]{7})(?![0-9])")
"""17 digits grouped 3-7-7; digits right before or after would make it some other number."""


def find_order_id(text: str) -> str | None:
    """The first order id in ``text``, or None."""
    match = ORDER_ID_RE.search(text)
    return "-".join(match.groups()) if match else None


def decoded_header(value: str) -> str:
    """An RFC 2047 encoded header value as a reader sees it; the raw value when it cannot be decoded."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def part_text(part: Message) -> str:
    """The decoded text of one non-multipart part as a reader sees it (HTML tags and entities removed)."""
    try:
        payload = part.get_payload(decode=True)
    except (ValueError, LookupError, AssertionError):
        payload = None
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        payload = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""
    charset = part.get_content_charset() or "utf-8"
    try:
        text = payload.decode(charset, "replace")
    except LookupError:
        text = payload.decode("utf-8", "replace")
    if part.get_content_subtype() == "html":
        # Entities such as &#45; hide an order id's hyphens from the pattern.
        text = html.unescape(re.sub(r"<[^>]*>", " ", text))
    return text


def order_id_in_body(content_headers: Iterable[tuple[str, str]], body: bytes) -> str | None:
    """The first order id in a (possibly cut-off) message body.

    ``content_headers`` are the message's top-level ``Content-Type`` and ``Content-Transfer-Encoding``
    fields, which say how to decode ``body``. Decoded by the content rules' scanner (content/reader.py),
    the one body reader of the milter, explain and lint, so all find the same id; a body cut off by the
    size bound still yields the ids in the part that arrived, and undecodable mail is searched raw.
    """
    from .content import DEFAULT_MAX_BYTES, BodyScanner, HeaderField  # content imports this module
    from .content.rules import order_id_in_view

    scanner = BodyScanner([HeaderField(name, value) for name, value in content_headers], 0, DEFAULT_MAX_BYTES)
    scanner.feed(body)
    return order_id_in_view(scanner.finish()) or find_order_id(body.decode("utf-8", "replace"))
