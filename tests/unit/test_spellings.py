"""The oracle test's spelling generator (tests/support/spellings.py): what it builds must stay usable."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.spellings import Context, SeededSpellings, Spelling, mailboxes, plain, spellings, spellings_of

CONTEXT = Context()
COMMENTS = ("(c)", "(shop)", "(a@b)", "(x(y))")


def bare(text: str) -> str:
    """The spelling without what only changes its form: comments, quotes, backslashes, case."""
    for comment in COMMENTS:
        text = text.replace(comment, "")
    return text.replace('"', "").replace("\\", "").casefold()


@settings(max_examples=300, deadline=None)
@given(spellings(CONTEXT))
def test_a_spelling_goes_verbatim_into_rcpt_to_and_argv(spelling: Spelling) -> None:
    assert spelling.text.isascii() and spelling.text.isprintable()
    assert not any(c.isspace() for c in spelling.text) and ">" not in spelling.text and "<" not in spelling.text


@settings(max_examples=300, deadline=None)
@given(spellings(CONTEXT))
def test_a_spelling_still_names_its_mailbox(spelling: Spelling) -> None:
    """Every construction wraps or re-quotes the mailbox; none may drop a part of it."""
    text = bare(spelling.text)
    assert spelling.mailbox.local.casefold() in text
    assert spelling.mailbox.domain in text


@given(mailboxes(CONTEXT), st.data())
def test_a_spelling_without_forms_is_the_mailbox_itself(mailbox, data: st.DataObject) -> None:
    """The controls rely on it: a case labelled plain is sent exactly as the mailbox reads."""
    spelling = data.draw(spellings_of(mailbox, CONTEXT))
    assert spelling.mailbox == mailbox
    if not spelling.forms:
        assert spelling.text == mailbox.address
    assert plain(mailbox).text == mailbox.address and plain(mailbox).plain


def test_the_seeded_generator_repeats_itself_and_uses_every_form() -> None:
    run = [SeededSpellings(7).spelling() for _ in range(3)]
    assert len({s.text for s in run}) == 1  # same seed, same first spelling
    generator = SeededSpellings(11)
    many = [generator.spelling() for _ in range(400)]
    assert len({s.text for s in many}) > 390
    used = {form.split(":")[0] for s in many for form in s.forms}
    assert {"at", "percent", "bang", "quoted-at", "quote-whole", "quote-local", "quote-partial", "quoted-pair",
            "escaped-at", "comment", "source-route", "trailing-dot", "case-domain", "case-local"} <= used
