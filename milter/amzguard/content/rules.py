"""The content rules: each looks at one kind of thing in a message to a buyer and reports evidence.

Pure functions over a ``ContentView`` (reader.py) and the header fields; ``judge_content`` runs the rules
whose action is not ``off`` and attaches that action to each finding. A rule says what it needs
(``RuleSpec.needs_body``), so a message for which only header rules are on reads no body.
"""

from __future__ import annotations

import ipaddress
import mimetypes
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

from ..orderid import ORDER_ID_RE, find_order_id
from .model import (
    UNSUBSCRIBE_HEADERS,
    ContentAction,
    ContentRule,
    ContentSettings,
    ContentVerdict,
    Finding,
)
from .phrases import OPT_OUT_PHRASES, OPT_OUT_URL_RE, PhraseMatcher, compile_phrases, incentive_phrases
from .reader import ContentView, HeaderField, Link, TextBlock, block, decoded_header

MAX_FINDINGS_PER_RULE = 10
"""A marketing template has dozens of links; ten name the problem, more only lengthen the bounce."""
MAX_EVIDENCE = 120
"""Characters of evidence kept per finding (a URL can be kilobytes of tracking parameters)."""

Evidence = tuple[str, int]
"""What was found and the message line it is on."""


@dataclass(frozen=True, slots=True)
class Context:
    """Everything a rule may look at for one message."""

    settings: ContentSettings
    headers: tuple[HeaderField, ...]
    subject: TextBlock
    view: ContentView
    proactive: bool

    def texts(self) -> tuple[TextBlock, ...]:
        """The subject and every text part."""
        return (self.subject, *self.view.texts)

    def links(self) -> list[Link]:
        """HTML links and URLs written in the text (mail readers make those clickable too)."""
        found = list(self.view.links)
        hrefs = {link.url for link in found}
        for text in self.view.texts:
            for match in _URL_RE.finditer(text.text):
                url = match[0].rstrip(".,;:!?")
                if url not in hrefs:
                    found.append(Link(url, text.line_at(match.start())))
        return found


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_EVIDENCE else f"{text[: MAX_EVIDENCE - 3]}..."


# -- headers ----------------------------------------------------------------------------------------


def list_unsubscribe(ctx: Context) -> Iterator[Evidence]:
    for field in ctx.headers:
        if field.name.casefold() in UNSUBSCRIBE_HEADERS:
            yield f"{field.name} header", field.line


# -- links ------------------------------------------------------------------------------------------

_URL_RE = re.compile(r"(?<![\w@/.])(?:https?://|www\.)[^\s<>\"'()\[\]{}]+", re.I)
_OPT_OUT_RE = compile_phrases(OPT_OUT_PHRASES)


def _host(url: str) -> str | None:
    """The host a link points to (lower case, no trailing dot); None for a link without a host."""
    if url.lower().startswith("www."):
        url = f"http://{url}"
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.rstrip(".").lower() if host else None


def _scheme(url: str) -> str:
    match = re.match(r"\s*([A-Za-z][A-Za-z0-9+.-]*):", url)
    return match[1].lower() if match else ""


def _in_domains(host: str, domains: Iterable[str]) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return False  # an IP address is never an allowed site
    except ValueError:
        pass
    return any(host == d or host.endswith(f".{d}") for d in domains)


def unsubscribe_link(ctx: Context) -> Iterator[Evidence]:
    for link in ctx.view.links:
        if OPT_OUT_URL_RE.search(unquote(link.url)) or (_OPT_OUT_RE and _OPT_OUT_RE.search(link.label)):
            yield f"opt-out link to {link.url}", link.line
    # A URL in plain text counts when opt-out wording stands just before it ("Unsubscribe: https://…").
    for text in ctx.view.texts:
        for match in _URL_RE.finditer(text.text):
            url = match[0].rstrip(".,;:!?")
            before = text.text[max(match.start() - 80, 0) : match.start()].rsplit("\n", 1)[-1]
            if OPT_OUT_URL_RE.search(unquote(url)) or (_OPT_OUT_RE and _OPT_OUT_RE.search(before)):
                yield f"opt-out link to {url}", text.line_at(match.start())


def foreign_link(ctx: Context) -> Iterator[Evidence]:
    domains = ctx.settings.link_domains
    for link in ctx.links():
        scheme = _scheme(link.url)
        if scheme in ("mailto", "tel", "cid") or link.url.startswith("#") or (not scheme and not link.url.lower().startswith("www.")):
            continue  # mailto/tel are the address and phone rules; anchors and relative links go nowhere
        host = _host(link.url)
        if scheme not in ("http", "https", "") or host is None:
            yield f"link to {link.url}", link.line
        elif not _in_domains(host, domains):
            yield f"link to {link.url}", link.line


# -- images -----------------------------------------------------------------------------------------

_TRACKING_URL_RE = re.compile(
    r"pixel|beacon|/track(?:ing)?/open|/open\.(?:gif|png|php|aspx?)|/wf/open|/trk/|/e/o/|/o/[a-z0-9]{8,}|"
    r"google-analytics\.com/collect|list-manage\.com/track|mandrillapp\.com/track|/t/open|[?&]open=|"
    r"\bopened?\.gif\b|/1x1\.|spacer\.gif",
    re.I,
)


def tracking_pixel(ctx: Context) -> Iterator[Evidence]:
    for image in ctx.view.images:
        if _scheme(image.url) not in ("http", "https") and not image.url.startswith("//"):
            continue  # an embedded image (cid:, data:) tracks nobody
        sizes = [size for size in (image.width, image.height) if size is not None]
        if sizes and all(size <= 2 for size in sizes):
            yield f"image of {image.width or '?'}x{image.height or '?'} px from {image.url}", image.line
        elif _TRACKING_URL_RE.search(image.url):
            yield f"image at a tracking URL {image.url}", image.line


def http_image(ctx: Context) -> Iterator[Evidence]:
    for image in ctx.view.images:
        if _scheme(image.url) == "http":
            yield f"http: image {image.url}", image.line


# -- text -------------------------------------------------------------------------------------------

_EMAIL_RE = re.compile(r"(?<![\w.+%-])[\w.+%-]+@((?:[\w](?:[\w-]*[\w])?\.)+[A-Za-z]{2,})(?![\w-])")


def email_address(ctx: Context) -> Iterator[Evidence]:
    allowed = ctx.settings.address_domains
    for text in ctx.texts():
        for match in _EMAIL_RE.finditer(text.text):
            if not _in_domains(match[1].lower(), allowed):
                yield f"e-mail address {match[0]}", text.line_at(match.start())
    for link in ctx.view.links:
        if _scheme(link.url) == "mailto":
            address = unquote(link.url.split(":", 1)[1].split("?", 1)[0])
            domain = address.rpartition("@")[2].lower()
            if not _in_domains(domain, allowed):
                yield f"e-mail address {address} (mailto: link)", link.line


_PHONE_RES = (
    # international: +49 30 1234567, 0049 (0)30 123 45 67, +1 (555) 010-0199
    # (not inside a token: "ref-0087431b6802" is an identifier, so no letter, digit or "-" around it)
    re.compile(r"(?<![\w+\-])(?:\+|00)[1-9][\d]{0,3}(?:[ \-./]{0,2}\(?\d+\)?){2,}(?![\w\-])"),
    # labelled: "Tel.: 030 1234567", "Telefon 030/123456", "phone: 555 0100 199", "WhatsApp 0151 2345678"
    re.compile(
        r"(?<!\w)(?:tel|telefon|telephone|telefono|teléfono|téléphone|tél|phone|fon|fax|mobil|mobile|handy|"
        r"cell|whatsapp|hotline|móvil|cellulare)\s*\.?\s*(?:nr\.?|no\.?|number|nummer)?\s*:?\s*"
        r"(\+?\(?\d[\d ()\-./]{5,}\d)(?!\w)",
        re.I,
    ),
    # North American: (555) 010-0199, 555-010-0199, 555.010.0199
    re.compile(r"(?<![\w(-])(?:\(\d{3}\)\s?|\d{3}[-.])\d{3}[-.]\d{4}(?![\w-])"),
)
_DATE_RE = re.compile(r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}$")


_PHONE_LABELS = ("tel", "fon", "phone", "fax", "mobil", "handy", "cell", "whatsapp", "hotline", "móvil")


def _phone_patterns(text: str) -> Iterator[re.Pattern[str]]:
    """The phone patterns worth running on ``text`` (cheap substring tests first: each pattern tried at
    every position of a 1.5 KB text cost ~0.1 ms)."""
    if "+" in text or "00" in text:
        yield _PHONE_RES[0]
    lower = text.lower()
    if any(label in lower for label in _PHONE_LABELS):
        yield _PHONE_RES[1]
    if "-" in text or "." in text or "(" in text:
        yield _PHONE_RES[2]


def _phone_candidates(text: str) -> Iterator[tuple[int, str]]:
    orders = [(m.start(), m.end()) for m in ORDER_ID_RE.finditer(text)]
    for pattern in _phone_patterns(text):
        for match in pattern.finditer(text):
            group = 1 if pattern.groups else 0
            number = match[group].strip(" -./")
            start = match.start(group)
            digits = sum(map(str.isdigit, number))
            if not 7 <= digits <= 15 or _DATE_RE.match(number):
                continue
            if any(start < end and begin < start + len(number) for begin, end in orders):
                continue  # an order id (NNN-NNNNNNN-NNNNNNN) is no phone number
            yield start, number


def phone_number(ctx: Context) -> Iterator[Evidence]:
    for text in ctx.texts():
        seen: set[int] = set()
        for start, number in sorted(_phone_candidates(text.text)):
            if any(abs(start - other) < 4 for other in seen):
                continue
            seen.add(start)
            yield f"phone number {number}", text.line_at(start)
    for link in ctx.view.links:
        if _scheme(link.url) == "tel":
            yield f"phone number {unquote(link.url.split(':', 1)[1])} (tel: link)", link.line


_EMOJI_RE = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\u231a\u231b\u23e9-\u23f3\u23f8-\u23fa\u3030\u303d"
    "\u3297\u3299]|.\ufe0f"
)
"""Pictographs (U+1F000-1FAFF: faces, hands, flags, objects), miscellaneous symbols and dingbats (☀ ☎ ✈ ✓
✨ ❤), ⭐ and the like, and any character followed by the emoji presentation selector U+FE0F. Typographic
symbols a shop writes (€ © ® ™ → • …) are not emojis."""


def emoji(ctx: Context) -> Iterator[Evidence]:
    for text in ctx.texts():
        for match in _EMOJI_RE.finditer(text.text):
            char = match[0][0]
            name = unicodedata.name(char, f"U+{ord(char):04X}").lower()
            where = "subject" if text.source == "subject" else "text"
            yield f"emoji {match[0]} ({name}) in the {where}", text.line_at(match.start())


@lru_cache(maxsize=16)
def _incentive_matcher(languages: tuple[str, ...], replaced: tuple[str, ...] | None, extra: tuple[str, ...]) -> PhraseMatcher:
    return PhraseMatcher(incentive_phrases(languages, replaced, extra))


def incentive_wording(ctx: Context) -> Iterator[Evidence]:
    settings = ctx.settings
    pattern = _incentive_matcher(settings.languages, settings.phrases, settings.extra_phrases)
    for text in ctx.texts():
        for match in pattern.finditer(text.text):
            yield f'wording "{" ".join(match[0].split())}"', text.line_at(match.start())


# -- attachments --------------------------------------------------------------------------------------


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def attachment_size(ctx: Context) -> Iterator[Evidence]:
    attachments = ctx.view.attachments
    total = sum(a.size for a in attachments)
    limit = ctx.settings.max_attachment_bytes
    if total > limit:
        yield (
            f"attachments of {_megabytes(total)} in total ({len(attachments)} parts; limit {_megabytes(limit)})",
            attachments[0].line,
        )


def _type_allowed(content_type: str, allowed: Sequence[str]) -> bool:
    major = content_type.split("/", 1)[0]
    return any(entry == content_type or entry == f"{major}/*" for entry in allowed)


def attachment_type(ctx: Context) -> Iterator[Evidence]:
    allowed = ctx.settings.attachment_types
    for attachment in ctx.view.attachments:
        content_type = attachment.content_type
        if content_type == "application/octet-stream" and attachment.filename:
            content_type = mimetypes.guess_type(attachment.filename, strict=False)[0] or content_type
        if not _type_allowed(content_type, allowed):
            name = f"{attachment.filename} " if attachment.filename else ""
            yield f"attachment {name}({content_type})", attachment.line


# -- order id ---------------------------------------------------------------------------------------


def order_id_of(ctx: Context) -> str | None:
    """The first order id in the subject, else in the text (as the review channel reads it)."""
    return find_order_id(ctx.subject.text) or order_id_in_view(ctx.view)


def order_id_in_view(view: ContentView) -> str | None:
    """The first order id in the decoded text parts of a scanned body."""
    for text in view.texts:
        found = find_order_id(text.text)
        if found:
            return found
    return None


def missing_order_id(ctx: Context) -> Iterator[Evidence]:
    if not ctx.proactive or order_id_of(ctx) is not None:
        return
    cut = f" (text read up to {ctx.settings.max_bytes} bytes)" if ctx.view.truncated else ""
    yield f"no order id (NNN-NNNNNNN-NNNNNNN) in the subject or the text{cut}", ctx.subject.line_at(0)


@dataclass(frozen=True, slots=True)
class RuleSpec:
    rule: ContentRule
    check: Callable[[Context], Iterator[Evidence]]
    needs_body: bool = True


RULES: tuple[RuleSpec, ...] = (
    RuleSpec(ContentRule.LIST_UNSUBSCRIBE, list_unsubscribe, needs_body=False),
    RuleSpec(ContentRule.UNSUBSCRIBE_LINK, unsubscribe_link),
    RuleSpec(ContentRule.TRACKING_PIXEL, tracking_pixel),
    RuleSpec(ContentRule.HTTP_IMAGE, http_image),
    RuleSpec(ContentRule.FOREIGN_LINK, foreign_link),
    RuleSpec(ContentRule.EMAIL_ADDRESS, email_address),
    RuleSpec(ContentRule.PHONE_NUMBER, phone_number),
    RuleSpec(ContentRule.EMOJI, emoji),
    RuleSpec(ContentRule.ATTACHMENT_SIZE, attachment_size),
    RuleSpec(ContentRule.ATTACHMENT_TYPE, attachment_type),
    RuleSpec(ContentRule.MISSING_ORDER_ID, missing_order_id),
    RuleSpec(ContentRule.INCENTIVE_WORDING, incentive_wording),
)
assert {spec.rule for spec in RULES} == set(ContentRule), "every ContentRule needs a RuleSpec"

ATTACHMENT_RULES: frozenset[ContentRule] = frozenset({ContentRule.ATTACHMENT_SIZE, ContentRule.ATTACHMENT_TYPE})
"""Rules that need the whole body (every attachment measured), not only its first ``max_bytes`` of text."""

CONTENT_HEADERS: tuple[str, ...] = ("subject", "content-type", "content-transfer-encoding", "content-disposition")
"""Header fields the body rules read: the subject is judged as text, the Content-* fields decode the body."""


def subject_block(headers: Iterable[HeaderField]) -> TextBlock:
    for field in headers:
        if field.name.casefold() == "subject":
            return block([(field.line, decoded_header(field.value))], "subject")
    return block([], "subject")


def wanted_headers(settings: ContentSettings) -> frozenset[str]:
    """Lower-case names of the header fields the active rules read."""
    active = settings.active()
    names: set[str] = set()
    if ContentRule.LIST_UNSUBSCRIBE in active:
        names.update(UNSUBSCRIBE_HEADERS)
    if any(spec.needs_body and spec.rule in active for spec in RULES):
        names.update(CONTENT_HEADERS)
    return frozenset(names)


def needs_any_body(settings: ContentSettings) -> bool:
    """Whether some active rule can ever need a body (else the body step can go for the connection)."""
    active = settings.active()
    return any(spec.needs_body and spec.rule in active for spec in RULES)


def needs_body(settings: ContentSettings, headers: Sequence[HeaderField], proactive: bool) -> bool:
    """Whether the body must be read to judge this message: some active rule reads it. The order-id
    rule alone needs it only for a proactive message whose subject has no order id."""
    active = settings.active()
    for spec in RULES:
        if not spec.needs_body or spec.rule not in active:
            continue
        if spec.rule is ContentRule.MISSING_ORDER_ID:
            if proactive and find_order_id(subject_block(headers).text) is None:
                return True
            continue
        return True
    return False


def judge_content(
    settings: ContentSettings,
    headers: Sequence[HeaderField],
    view: ContentView | None,
    proactive: bool,
) -> ContentVerdict:
    """Run every active rule on one message. ``view``: the scanned body (None: not read, because no
    active rule needed it). ``proactive``: a review request or a critical message (the order-id rule)."""
    ctx = Context(settings, tuple(headers), subject_block(headers), view or ContentView(), proactive)
    findings: list[Finding] = []
    actions = settings.table()
    for spec in RULES:
        action = actions[spec.rule]
        if action is ContentAction.OFF:
            continue  # without a body (view None) a rule still judges the subject; the rest is empty
        seen: set[str] = set()
        for evidence, line in spec.check(ctx):
            evidence = _cut(evidence)
            if evidence in seen:
                continue
            seen.add(evidence)
            header = evidence.removesuffix(" header") if spec.rule is ContentRule.LIST_UNSUBSCRIBE else None
            findings.append(Finding(spec.rule, action, evidence, line, header))
            if len(seen) >= MAX_FINDINGS_PER_RULE:
                break
    return ContentVerdict(tuple(findings), truncated=ctx.view.truncated, order_id=order_id_of(ctx))
