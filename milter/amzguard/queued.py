"""Which text makes Postfix delete a recipient it queued.

cleanup(8) deletes by comparing (``strcmp``, case-sensitive) the
internalised argument of delete-recipient with the queued original recipient; a mismatch is silent. On the
SMTP path that queued text is smtpd's ``extract_addr`` result, which :func:`smtp_queued_form` computes;
on the sendmail(1) path it is the text given to sendmail(1), which the milter never sees.

Pure code: no I/O, no pymilter.
"""

from __future__ import annotations

import re

# Characters allowed unquoted in a dot-atom local part (RFC 5322 atext plus the dot).
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~.")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")


def quote_local(local: str) -> str:
    """A local part as written in an address: quoted when it is not a plain dot-atom (as Postfix's
    quote_821_local does), so that parsing it back gives ``local`` again."""
    if _DOT_ATOM.fullmatch(local):  # the usual case, decided without a per-character loop
        return local
    needs_quotes = (
        not local
        or local.startswith(".")
        or local.endswith(".")
        or ".." in local
        or any((char not in _ATEXT and ord(char) < 128) or char.isspace() or not char.isprintable() for char in local)
    )
    if not needs_quotes:
        return local
    escaped = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


_UNSURE_OUTSIDE_QUOTES = frozenset("()<>,;:")
"""Outside quotes, these make Postfix's tokenizer group or drop text in ways not reproduced here."""
_PLAIN = re.compile(r'[^\s"\\()<>,;:\[\]]*')
"""Text without quoting, comments, literals or separators: its internal form is the text itself. Almost
every recipient is such text; checking that first takes the per-character loop (about 70 us for a relay
address on the test machine) out of the common case."""


def internal_form(text: str) -> tuple[str, bool]:
    """An address in Postfix's internal form (tok822_internalize): quotes and quoted-pairs removed,
    case and trailing dots kept. The flag says whether the reading is exact: False when the text holds
    what tok822 groups, drops or rewrites in ways not reproduced here (white space or comments outside
    quotes, brackets, list separators, an unterminated quote, a dangling backslash, control characters).
    """
    if _PLAIN.fullmatch(text) and text.isprintable():
        return text, True
    out: list[str] = []
    exact = True
    quoted = False
    escaped = False
    literal = False  # inside a [domain literal], which tok822 keeps as it is
    for char in text:
        if not char.isprintable() and char != " ":
            exact = False
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif quoted:
            if char == '"':
                quoted = False
            else:
                out.append(char)
        elif char == '"':
            quoted = True
        elif char == "[":
            literal = True
            out.append(char)
        elif char == "]":
            literal = False
            out.append(char)
        elif char.isspace() or (char in _UNSURE_OUTSIDE_QUOTES and not literal):
            exact = False
            out.append(char)
        else:
            out.append(char)
    if quoted or escaped or literal:
        exact = False
    return "".join(out), exact


def smtp_queued_form(raw: str) -> tuple[str, bool]:
    """The recipient as smtpd(8) queues it (its ORCP record), from the RCPT argument the milter got.

    smtpd.c ``extract_addr``: strip one outer ``<``...``>`` pair only if the text starts with ``<`` and
    ends with ``>``; if the rest starts with ``@`` and has a ``:``, drop up to and including the first
    ``:`` (the source route); then parse and internalise. The flag is :func:`internal_form`'s.
    """
    text = raw
    if len(text) >= 2 and text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if text.startswith("@") and ":" in text:
        text = text.split(":", 1)[1]
    return internal_form(text)


def delete_argument(internal: str) -> str:
    """The delete-recipient argument that cleanup(8) internalises back to exactly ``internal``.

    cleanup_milter.c parses its argument as an RFC 822 address and internalises it, so a local part with
    special characters (``@``, space, quotes) must be quoted; the domain is passed as it is (its case and
    a trailing dot are part of what is compared).
    """
    local, at, domain = internal.rpartition("@")
    return f"{quote_local(local)}@{domain}" if at else quote_local(internal)
