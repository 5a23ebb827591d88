"""Reading a message body the way a mail reader shows it, within a byte bound, as a stream.

The milter receives the body in chunks (64 KiB from Postfix); ``BodyScanner`` reads them line by line and
keeps only what the content rules judge: the decoded text of ``text/plain`` and ``text/html`` parts (up to
``max_bytes`` of encoded text), the links and images of the HTML, and, for every other part, its type, file
name and size. Attachments are measured (their bytes counted as they pass) and never kept, so a 10 MB
attachment costs one pass over its lines and no memory. ``amzguard lint`` feeds a file through the same
scanner, so both see the same parts, and each piece of text keeps the line of the message it came from.

Why not ``email.message_from_bytes``: it keeps the whole message in memory (attachments included) and
loses line positions; the stdlib is still used to parse each part's header block and to decode
quoted-printable and base64.
"""

from __future__ import annotations

import binascii
import html
import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.message import Message

from .. import orderid

MAX_PARTS = 100
"""Parts of one message that are looked at; a buyer message has one to three. Past this, parts are only
measured (sizes still add up), so odd mail bounds the work instead of multiplying it."""
MAX_DEPTH = 8
"""Nested multiparts followed; deeper ones are measured as one part each."""
MAX_PART_HEADER = 16 * 1024
"""Bytes of one part's header block kept (a real one is a few hundred)."""
MAX_PENDING = 64 * 1024
"""Longest line held while waiting for its end; longer lines are passed on in pieces (a base64 blob
without line breaks must not grow memory)."""


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field as the rules see it; ``line``: its first line in the message (0: not known)."""

    name: str
    value: str
    line: int = 0


@dataclass(frozen=True, slots=True)
class TextBlock:
    """The decoded text of one part (or the subject), with the message line each piece came from."""

    text: str
    starts: tuple[int, ...]
    """Offsets in ``text`` where a piece from a new message line begins (ascending, first is 0)."""
    lines: tuple[int, ...]
    """The message line of each piece."""
    source: str = "text"
    """``subject``, ``text`` (text/plain) or ``html``."""

    def line_at(self, offset: int) -> int:
        if not self.starts:
            return 0
        return self.lines[max(bisect_right(self.starts, offset) - 1, 0)]


@dataclass(frozen=True, slots=True)
class Link:
    url: str
    line: int
    label: str = ""
    """The anchor text of an HTML link (empty for a URL written in the text)."""


@dataclass(frozen=True, slots=True)
class Image:
    url: str
    line: int
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class Attachment:
    content_type: str
    filename: str
    size: int
    """Decoded size in bytes (base64 counted as 3/4 of its characters), measured, never read."""
    line: int


@dataclass(frozen=True, slots=True)
class ContentView:
    """What the content rules judge in a body."""

    texts: tuple[TextBlock, ...] = ()
    links: tuple[Link, ...] = ()
    images: tuple[Image, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    truncated: bool = False
    """Text parts went past ``max_bytes``; the rest of the text was not read (attachments still measured)."""
    body_bytes: int = 0


def decoded_header(value: str) -> str:
    """An RFC 2047 encoded header value as a reader shows it, unfolded, white space runs collapsed."""
    return " ".join(orderid.decoded_header(value).split())


PART_FIELDS = ("content-type", "content-transfer-encoding", "content-disposition")
"""The only fields of a part's header the scanner reads."""


def part_header(fields: Iterable[tuple[str, str]]) -> Message:
    """A ``Message`` holding only the Content-* fields, so the stdlib's parameter parsing (boundary,
    charset, RFC 2231 file names) can be used without its feed parser, which cost ~0.2 ms per part."""
    message = Message()
    for name, value in fields:
        if name.strip().casefold() in PART_FIELDS:
            message[name.strip()] = " ".join(value.split())
    return message


def parse_part_header(block: bytes) -> Message:
    """A part's raw header block (CRLF lines, folded lines allowed)."""
    fields: list[list[str]] = []
    for raw in block.decode("utf-8", "surrogateescape").split("\r\n"):
        if raw[:1] in (" ", "\t") and fields:
            fields[-1][1] += " " + raw.strip()
        elif ":" in raw:
            name, _, value = raw.partition(":")
            fields.append([name, value])
    return part_header((name, value) for name, value in fields)


def top_part_header(headers: Iterable[HeaderField]) -> Message:
    """The top-level Content-Type/-Transfer-Encoding/-Disposition, for the scanner."""
    return part_header((field.name, field.value) for field in headers)


@dataclass(slots=True)
class _Part:
    header: Message
    line: int
    """The line where the part's header (or, at top level, its body) starts."""
    kind: str
    """``text``, ``html``, ``attachment`` or ``skip``."""
    encoding: str
    lines: list[tuple[int, bytes]] = field(default_factory=list)
    size: int = 0
    chars: int = 0
    """base64 characters of an attachment (its size is 3/4 of them, taken when the part ends)."""


_TOKEN_RE = re.compile(
    r"""<!--.*?(?:-->|\Z)                                   # comment (also an unclosed one)
      | <(?P<end>/?)(?P<tag>[A-Za-z][A-Za-z0-9:-]*)
        (?P<attrs>(?:[^>"']|"[^"]*"|'[^']*')*)>             # start or end tag, quoted '>' allowed
      | <[!?][^>]*>                                          # doctype, processing instruction
    """,
    re.S | re.X,
)
_ATTR_RE = re.compile(r"""([^\s=/>"']+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s>]+))?""")
_SKIPPED = ("style", "script", "head", "title")
_BREAKS = frozenset({"br", "p", "div", "tr", "li", "td", "table", "h1", "h2", "h3", "h4", "h5", "h6"})


def _attributes(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in _ATTR_RE.findall(text):
        if value[:1] in ("'", '"'):
            value = value[1:-1]
        values.setdefault(name.lower(), html.unescape(value))
    return values


def read_html(source: str, skip_quoted: bool) -> tuple[
    list[tuple[int, str]], list[tuple[int, str, str]], list[tuple[int, str, int | None, int | None]]
]:  # fmt: skip
    """Visible text, links and images of an HTML part, each with its 0-based line in ``source``.

    A regular-expression tokenizer rather than html.parser: it never raises on broken markup and is
    several times faster (html.parser cost ~0.5 ms for a 1.5 KB review request, most of its judgement).
    Text inside <style>, <script>, <head> and <title> and comments is no text a reader shows.
    """
    pieces: list[tuple[int, str]] = []
    links: list[tuple[int, str, str]] = []
    images: list[tuple[int, str, int | None, int | None]] = []
    line = 0
    position = 0
    quoted = 0
    anchor: list[str] | None = None
    anchor_index = -1
    length = len(source)
    while position < length:
        match = _TOKEN_RE.search(source, position)
        end = match.start() if match else length
        if end > position:
            text = source[position:end]
            if not quoted:
                data = html.unescape(text)
                if data.strip():
                    pieces.append((line + text.count("\n", 0, len(text) - len(text.lstrip())), data))
                    if anchor is not None:
                        anchor.append(data)
            line += text.count("\n")
        if match is None:
            break
        token = match[0]
        tag = (match["tag"] or "").lower()
        closing = bool(match["end"])
        position = match.end()
        if tag in _SKIPPED and not closing:
            close = re.compile(rf"</{tag}\s*>", re.I).search(source, position)
            stop = close.end() if close else length
            line += token.count("\n") + source.count("\n", position, stop)
            position = stop
            continue
        if tag == "blockquote" and skip_quoted:
            quoted = max(quoted + (-1 if closing else 1), 0)
        if tag in _BREAKS:
            pieces.append((line, "\n"))
        if tag and not closing and not quoted:
            if tag in ("a", "area", "img"):
                values = _attributes(match["attrs"])
                if tag == "img" and values.get("src", "").strip():
                    width = _pixels(values.get("width"), values.get("style"), "width")
                    height = _pixels(values.get("height"), values.get("style"), "height")
                    images.append((line, values["src"].strip(), width, height))
                elif tag != "img" and values.get("href", "").strip():
                    links.append((line, values["href"].strip(), ""))
                    if tag == "a":
                        anchor, anchor_index = [], len(links) - 1
        elif tag == "a" and closing and anchor is not None:
            url_line, url, _ = links[anchor_index]
            links[anchor_index] = (url_line, url, " ".join("".join(anchor).split()))
            anchor = None
        line += token.count("\n")
    if anchor is not None:
        url_line, url, _ = links[anchor_index]
        links[anchor_index] = (url_line, url, " ".join("".join(anchor).split()))
    return pieces, links, images


_CSS_RE = {
    name: re.compile(rf"(?:^|[;\s]){name}\s*:\s*(\d+(?:\.\d+)?)\s*(?:px)?\s*(?:;|$|!)", re.I)
    for name in ("width", "height")
}


def _pixels(attribute: str | None, style: str | None, name: str) -> int | None:
    """A width/height in pixels from the attribute (``1``, ``1px``) or the inline style; None if not given."""
    if attribute:
        match = re.match(r"\s*(\d+(?:\.\d+)?)\s*(?:px)?\s*$", attribute)
        if match:
            return int(float(match[1]))
    if style:
        match = _CSS_RE[name].search(style)
        if match:
            return int(float(match[1]))
    return None


def _decode_lines(part: _Part) -> list[tuple[int, bytes]]:
    """The part's body decoded from its transfer encoding: (message line, decoded bytes) pieces."""
    if part.encoding == "quoted-printable":
        pieces: list[tuple[int, bytes]] = []
        group: list[bytes] = []
        first = 0
        for line, raw in part.lines:
            if not group:
                first = line
            stripped = raw.rstrip(b" \t")
            if stripped.endswith(b"="):
                group.append(stripped[:-1])
                continue
            group.append(stripped)
            pieces.append((first, binascii.a2b_qp(b"".join(group))))
            group = []
        if group:
            pieces.append((first, binascii.a2b_qp(b"".join(group))))
        return pieces
    if part.encoding == "base64":
        return _decode_base64(part.lines)
    return list(part.lines)


def _decode_base64(lines: Sequence[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Decode base64 lines; each decoded line gets the encoded line its first byte came from."""
    starts: list[int] = []
    numbers: list[int] = []
    encoded = bytearray()
    for line, raw in lines:
        clean = re.sub(rb"[^A-Za-z0-9+/=]", b"", raw)
        if not clean:
            continue
        starts.append(len(encoded))
        numbers.append(line)
        encoded += clean
    data = bytes(encoded).split(b"=", 1)[0]
    data = data[: len(data) - len(data) % 4] + _tail(data)
    try:
        decoded = binascii.a2b_base64(data)
    except binascii.Error:
        decoded = b""
    pieces: list[tuple[int, bytes]] = []
    offset = 0
    for text_line in decoded.split(b"\n"):
        position = offset * 4 // 3
        index = max(bisect_right(starts, position) - 1, 0)
        pieces.append((numbers[index] if numbers else 0, text_line))
        offset += len(text_line) + 1
    return pieces


def _tail(data: bytes) -> bytes:
    # A cut-off body (the size bound) ends mid-quantum: decode what is complete, pad the rest.
    rest = data[len(data) - len(data) % 4 :]
    if len(rest) < 2:
        return b""
    return rest + b"=" * (4 - len(rest))


def _text(pieces: Iterable[tuple[int, bytes]], charset: str) -> list[tuple[int, str]]:
    try:
        "".encode(charset)
    except LookupError:
        charset = "utf-8"
    return [(line, raw.decode(charset, "replace").rstrip("\r")) for line, raw in pieces]


def block(pieces: Iterable[tuple[int, str]], source: str, separator: str = "\n") -> TextBlock:
    """One TextBlock from (line, text) pieces, joined with ``separator``."""
    text: list[str] = []
    starts: list[int] = []
    lines: list[int] = []
    offset = 0
    for line, piece in pieces:
        if not starts or lines[-1] != line:
            starts.append(offset)
            lines.append(line)
        text.append(piece)
        text.append(separator)
        offset += len(piece) + len(separator)
    return TextBlock("".join(text), tuple(starts), tuple(lines), source)


class BodyScanner:
    """Feed a body in chunks, then ``finish()`` for the ``ContentView``.

    ``headers`` are the message's top-level header fields (only the Content-* ones matter here);
    ``first_line`` is the message line of the first body line (header lines + 2 when known, else 0).
    """

    def __init__(
        self, headers: Iterable[HeaderField], first_line: int, max_bytes: int, skip_quoted: bool = True
    ) -> None:
        self.max_bytes = max_bytes
        self.skip_quoted = skip_quoted
        self._line = first_line - 1
        self._pending = b""
        self._midline = False
        self._frames: list[bytes] = []
        self._header: bytearray | None = None
        self._header_line = 0
        self._state = "body"
        self._kept = 0
        self._parts_seen = 0
        self.truncated = False
        self.body_bytes = 0
        self._texts: list[TextBlock] = []
        self._links: list[Link] = []
        self._images: list[Image] = []
        self._attachments: list[Attachment] = []
        self._part: _Part | None = None
        self._open_part(top_part_header(headers), first_line)

    # -- lines ------------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        self.body_bytes += len(chunk)
        data = self._pending + chunk if self._pending else chunk
        self._pending = b""
        position = 0
        length = len(data)
        while position < length:
            if self._bulk():
                position, stop = self._skim(data, position)
                if stop:
                    break
                continue
            newline = data.find(b"\n", position)
            if newline < 0:
                break
            self._line_of(data[position:newline], self._midline)
            self._midline = False
            position = newline + 1
        rest = data[position:]
        if len(rest) > MAX_PENDING:
            self._line_of(rest, self._midline, ended=False)
            self._midline = True
        else:
            self._pending = rest

    def _bulk(self) -> bool:
        """Whether only boundary lines matter now: inside an attachment, a preamble or an epilogue."""
        if self._state == "skip":
            return True
        part = self._part
        return self._state == "body" and (part is None or part.kind in ("attachment", "skip"))

    def _skim(self, data: bytes, position: int) -> tuple[int, bool]:
        """Pass over lines that cannot be a boundary without a Python step per line (a 10 MB attachment
        is ~135,000 lines; bytes.find scans in C). Returns where to go on, and whether to stop there and
        keep the rest as a partial line."""
        if not self._midline and data.startswith(b"--", position):
            newline = data.find(b"\n", position)
            if newline < 0:
                return position, True
            self._line_of(data[position:newline], False)
            return newline + 1, False
        candidate = data.find(b"\n--", position)
        if candidate >= 0:
            self._account(data[position : candidate + 1])
            self._midline = False
            return candidate + 1, False
        last = data.rfind(b"\n", position)
        if last >= 0:
            self._account(data[position : last + 1])
            self._midline = False
            return last + 1, True
        return position, True

    def _account(self, lines: bytes) -> None:
        """Whole lines of a bulk state: counted, and measured when they belong to an attachment."""
        self._line += lines.count(b"\n") - (1 if self._midline else 0)
        part = self._part
        if self._state == "body" and part is not None and part.kind == "attachment":
            if part.encoding == "base64":
                part.chars += len(lines.translate(None, b" \t\r\n"))
            else:
                part.size += len(lines)

    def _line_of(self, raw: bytes, midline: bool, ended: bool = True) -> None:
        if not midline:
            self._line += 1
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if self._frames and not midline and line.startswith(b"--") and self._boundary(line):
            return
        state = self._state
        if state == "body":
            self._body_line(raw, line, ended)
        elif state == "header":
            self._header_line_of(line)

    def _boundary(self, line: bytes) -> bool:
        for depth in range(len(self._frames) - 1, -1, -1):
            boundary = self._frames[depth]
            if not line.startswith(boundary, 2):
                continue
            rest = line[2 + len(boundary) :]
            if rest.startswith(b"--"):
                self._close_part()
                del self._frames[depth:]
                self._state = "skip"  # the epilogue of that multipart
                return True
            if not rest.strip():
                self._close_part()
                del self._frames[depth + 1 :]
                self._state = "header"
                self._header = bytearray()
                self._header_line = self._line
                return True
        return False

    def _header_line_of(self, line: bytes) -> None:
        assert self._header is not None
        if line.strip():
            if len(self._header) < MAX_PART_HEADER:
                self._header += line + b"\r\n"
            return
        header = parse_part_header(bytes(self._header) + b"\r\n")
        self._header = None
        self._open_part(header, self._header_line)

    def _open_part(self, header: Message, line: int) -> None:
        ctype = header.get_content_type()
        if header.get_content_maintype() == "multipart":
            boundary = header.get_param("boundary")
            if isinstance(boundary, str) and boundary and len(self._frames) < MAX_DEPTH:
                self._frames.append(boundary.encode("utf-8", "surrogateescape"))
                self._part = None
                self._state = "skip"  # the preamble
                return
        self._parts_seen += 1
        disposition = str(header.get("content-disposition", "")).split(";")[0].strip().casefold()
        if ctype in ("text/plain", "text/html") and disposition != "attachment":
            kind = "html" if ctype == "text/html" else "text"
            if self._parts_seen > MAX_PARTS:
                kind = "skip"
        else:
            kind = "attachment"
        encoding = str(header.get("content-transfer-encoding", "")).strip().casefold()
        self._part = _Part(header=header, line=line, kind=kind, encoding=encoding)
        self._state = "body"

    def _body_line(self, raw: bytes, line: bytes, ended: bool = True) -> None:
        part = self._part
        if part is None:
            return
        if part.kind == "attachment":
            # Measured as the bytes that pass (base64: 3/4 of its characters), never kept.
            if part.encoding == "base64":
                part.chars += len(raw.translate(None, b" \t\r\n"))
            else:
                part.size += len(raw) + (1 if ended else 0)
        elif part.kind != "skip":
            if self._kept + len(line) > self.max_bytes:
                self.truncated = True
                return
            self._kept += len(line) + 1
            part.lines.append((self._line, line))

    # -- parts ------------------------------------------------------------------------------------

    def _close_part(self) -> None:
        part = self._part
        self._part = None
        if part is None:
            return
        if part.kind == "attachment":
            filename = part.header.get_filename() or ""
            if not isinstance(filename, str):
                filename = str(filename)
            size = part.size + part.chars * 3 // 4
            self._attachments.append(Attachment(part.header.get_content_type(), decoded_header(filename), size, part.line))
            return
        if part.kind == "skip" or not part.lines:
            return
        charset = part.header.get_content_charset() or "utf-8"
        pieces = _text(_decode_lines(part), charset)
        if part.kind == "html":
            self._html(pieces)
        else:
            if self.skip_quoted:
                pieces = [(line, text) for line, text in pieces if not text.lstrip().startswith(">")]
            self._texts.append(block(pieces, "text"))

    def _html(self, pieces: list[tuple[int, str]]) -> None:
        numbers = [line for line, _ in pieces]

        def message_line(index: int) -> int:
            return numbers[min(index, len(numbers) - 1)] if numbers else 0

        texts, links, images = read_html("\n".join(text for _, text in pieces), self.skip_quoted)
        text_pieces = [(message_line(line), " ".join(data.split()) if data != "\n" else "") for line, data in texts]
        self._texts.append(block(((line, text) for line, text in text_pieces if text), "html", " "))
        for line, url, label in links:
            self._links.append(Link(url, message_line(line), label))
        for line, url, width, height in images:
            self._images.append(Image(url, message_line(line), width, height))

    def finish(self) -> ContentView:
        if self._pending:
            self._line_of(self._pending, self._midline)
            self._pending = b""
        self._close_part()
        return ContentView(
            texts=tuple(self._texts),
            links=tuple(self._links),
            images=tuple(self._images),
            attachments=tuple(self._attachments),
            truncated=self.truncated,
            body_bytes=self.body_bytes,
        )


def split_message(raw: bytes) -> tuple[list[HeaderField], bytes, int]:
    """A message file as the MTA would pass it: header fields with their lines, the body, and the line
    the body starts on. Folded fields keep their line breaks, as the milter receives them. An mbox
    ``From `` line before the header is skipped."""
    fields: list[HeaderField] = []
    current: list[bytes] = []
    start = 0
    number = 0
    position = 0
    body_at = len(raw)
    body_line = 0
    while position < len(raw):
        newline = raw.find(b"\n", position)
        end = newline if newline >= 0 else len(raw)
        line = raw[position:end].rstrip(b"\r")
        number += 1
        following = end + 1
        if not line.strip():
            body_at, body_line = following, number + 1
            break
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
        elif b":" in line or (number == 1 and line.startswith(b"From ")):
            if current:
                fields.append(_field(current, start))
            current = [] if line.startswith(b"From ") and number == 1 else [line]
            start = number
        else:
            # Not a header line: the body starts here (a message without a blank line after its header).
            body_at, body_line = position, number
            break
        position = following
    else:
        body_line = number + 1
    if current:
        fields.append(_field(current, start))
    return fields, raw[body_at:], body_line


def _field(lines: list[bytes], line: int) -> HeaderField:
    name, _, first = lines[0].partition(b":")
    value = b"\n".join([first.lstrip(b" \t"), *lines[1:]])
    return HeaderField(name.decode("ascii", "replace").strip(), value.decode("utf-8", "surrogateescape"), line)
