"""Rewrite the marked address in a visible ``To:``/``Cc:`` field to the unmarked one the envelope now has.

Only the address token's text changes: display names, comments, encoded words, folding and the other
addresses stay byte for byte. The field is tokenised as RFC 5322 reads it (quoted strings, nested
comments, angle brackets, groups), and the result is checked with the standard library's parser: it
must read as the same address list with only the marked addresses replaced. Anything else (an address
split by a fold or a comment, an unbalanced quote, a field the check does not confirm) gives None: the
field stays as it is, which is never worse than before amzguard unmarked the envelope.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import getaddresses


ADDRESS_FIELDS = frozenset({"to", "cc"})
"""Lower-case names of the fields rewritten (Bcc never reaches the buyer's copy in the header)."""


@dataclass(frozen=True, slots=True)
class Rewrite:
    """The outcome for one field: ``value`` is the new field value, None when it is kept unchanged."""

    value: str | None
    replaced: int
    """How many marked addresses the field named (replaced when ``value`` is not None)."""


def _key(addr_spec: str) -> str | None:
    """Compare form of an addr-spec token: the local part unquoted, case folded (relay addresses are)."""
    local, at, domain = addr_spec.rpartition("@")
    if not at or not local or not domain:
        return None
    if local.startswith('"'):
        if len(local) < 2 or not local.endswith('"'):
            return None
        inner = local[1:-1]
        out: list[str] = []
        escaped = False
        for char in inner:
            if escaped:
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                return None
            else:
                out.append(char)
        if escaped:
            return None
        local = "".join(out)
    elif '"' in local or "\\" in local:
        return None
    if any(char in " \t\r\n()<>,;:[]" for char in local + domain):
        return None
    return f"{local}@{domain}".casefold()


def _segments(value: str) -> list[tuple[int, int, int, int]] | None:
    """Top-level mailbox segments as (start, end, angle_start, angle_end); angle_* -1 without ``<>``.

    None when the field cannot be tokenised (unbalanced quote, comment or angle bracket)."""
    segments: list[tuple[int, int, int, int]] = []
    start = 0
    angle_open = angle_start = angle_end = -1
    i, n = 0, len(value)
    while i < n:
        char = value[i]
        if char == "\\":
            i += 2
            continue
        if char == '"':
            i += 1
            while i < n and value[i] != '"':
                i += 2 if value[i] == "\\" else 1
            if i >= n:
                return None
        elif char == "(":
            depth = 1
            i += 1
            while i < n and depth:
                if value[i] == "\\":
                    i += 1
                elif value[i] == "(":
                    depth += 1
                elif value[i] == ")":
                    depth -= 1
                i += 1
            if depth:
                return None
            continue
        elif char == ")":
            return None
        elif char == "<":
            if angle_open >= 0 or angle_start >= 0:
                return None
            angle_open = i
        elif char == ">":
            if angle_open < 0:
                return None
            angle_start, angle_end, angle_open = angle_open + 1, i, -1
        elif angle_open < 0 and char in ",:;":
            # ',' separates mailboxes; ':' ends a group's display name, ';' ends the group.
            if char == ":":
                start = i + 1
            else:
                segments.append((start, i, angle_start, angle_end))
                start = i + 1
                angle_start = angle_end = -1
        i += 1
    if angle_open >= 0:
        return None
    segments.append((start, n, angle_start, angle_end))
    return segments


def _addr_span(value: str, segment: tuple[int, int, int, int]) -> tuple[int, int] | None:
    """Where the addr-spec of a mailbox segment is (inside ``<>``, or the bare token); None: no plain token."""
    start, end, angle_start, angle_end = segment
    if angle_start >= 0:
        start, end = angle_start, angle_end
    else:
        # A bare addr-spec may be followed by a comment: ``x@y (Max)``.
        text = value[start:end]
        cut = text.find("(")
        if cut >= 0:
            end = start + cut
    while start < end and value[start] in " \t\r\n":
        start += 1
    while end > start and value[end - 1] in " \t\r\n":
        end -= 1
    return (start, end) if start < end else None


def rewrite_field(value: str, unmarked: Mapping[str, str]) -> Rewrite:
    """``value`` with every addr-spec that is a key of ``unmarked`` (case-folded marked address)
    replaced by its value (the unmarked address); see the module docstring for what is kept."""
    segments = _segments(value)
    if segments is None:
        return Rewrite(None, _count_named(value, unmarked))
    edits: list[tuple[int, int, str]] = []
    for segment in segments:
        span = _addr_span(value, segment)
        if span is None:
            continue
        key = _key(value[span[0] : span[1]])
        if key is not None and key in unmarked:
            edits.append((span[0], span[1], unmarked[key]))
    if not edits:
        return Rewrite(None, _count_named(value, unmarked))
    new = value
    for start, end, text in reversed(edits):
        new = new[:start] + text + new[end:]
    return Rewrite(new if _same_but_replaced(value, new, unmarked) else None, len(edits))


def _count_named(value: str, unmarked: Mapping[str, str]) -> int:
    """How many marked addresses the standard parser finds in a field we could not tokenise (0: none)."""
    # A substring count: a field that cannot be tokenised may not parse either, and a marked address
    # left visible must be logged rather than missed (whitespace dropped: a fold may split it).
    folded = "".join(value.split()).casefold()
    return sum(folded.count(key) for key in unmarked)


def _loose_key(addr: str) -> str:
    return _key(addr) or addr.casefold()


def _same_but_replaced(old: str, new: str, unmarked: Mapping[str, str]) -> bool:
    """The check that the rewrite changed nothing but the marked addresses, by the standard parser."""
    before = getaddresses([old])
    after = getaddresses([new])
    if len(before) != len(after):
        return False
    for (name_before, addr_before), (name_after, addr_after) in zip(before, after):
        if name_before != name_after:
            return False
        key = _loose_key(addr_before)
        wanted = unmarked.get(key)
        expected = _loose_key(wanted) if wanted is not None else key
        if _loose_key(addr_after) != expected:
            return False
    return True


def marked_key(local: str, domain: str) -> str:
    """The ``unmarked`` mapping's key for a marked address (local part unquoted, case folded)."""
    return f"{local}@{domain}".casefold()
