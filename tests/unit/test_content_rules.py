"""Content rules on made-up messages: each rule finds what Amazon forbids, and the near misses pass.

The fixture files (tests/fixtures/content/*.eml) are the same ones ``amzguard lint`` and the milter are
run on; here only the pure engine judges them.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amzguard.content import (
    BodyScanner,
    ContentAction,
    ContentRule,
    ContentSettings,
    HeaderField,
    judge_content,
    judge_message,
    needs_body,
    read_body,
    split_message,
    wanted_headers,
)
from amzguard.config import DEFAULT_RELAY_DOMAINS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "content"
DEFAULTS = ContentSettings(address_domains=DEFAULT_RELAY_DOMAINS)

R = ContentRule


def findings(name: str, settings: ContentSettings = DEFAULTS, proactive: bool = True) -> set[tuple[R, str]]:
    verdict = judge_message((FIXTURES / name).read_bytes(), settings, proactive)
    return {(f.rule, f.evidence) for f in verdict.findings}


def rules_found(name: str, settings: ContentSettings = DEFAULTS, proactive: bool = True) -> set[R]:
    return {rule for rule, _ in findings(name, settings, proactive)}


def message(body: str, content_type: str = "text/plain; charset=utf-8", subject: str = "Order 302-1234567-1234567",
            extra: str = "") -> bytes:  # fmt: skip
    head = f"From: shop@shop.example\r\nTo: x@marketplace.amazon.de\r\nSubject: {subject}\r\n{extra}"
    return f"{head}Content-Type: {content_type}\r\n\r\n{body}".replace("\n", "\r\n").replace("\r\r", "\r").encode()


def judged(raw: bytes, settings: ContentSettings = DEFAULTS, proactive: bool = True) -> set[R]:
    return {f.rule for f in judge_message(raw, settings, proactive).findings}


# -- the fixtures as a whole -------------------------------------------------------------------------

CLEAN = ["en_plain_review.eml", "de_review_multipart.eml", "fr_review_base64.eml", "it_review_html.eml",
         "es_review_latin1.eml", "en_near_misses.eml"]  # fmt: skip


@pytest.mark.parametrize("name", CLEAN)
def test_clean_review_requests_in_five_languages_have_no_findings(name: str) -> None:
    verdict = judge_message((FIXTURES / name).read_bytes(), DEFAULTS, proactive=True)
    assert verdict.findings == ()
    assert verdict.order_id is not None


def test_marketing_template_is_refused_for_each_thing_amazon_forbids() -> None:
    verdict = judge_message((FIXTURES / "en_marketing.eml").read_bytes(), DEFAULTS, proactive=True)
    assert verdict.refused
    found = {(f.rule, f.evidence): f for f in verdict.findings}
    assert set(found) >= {
        (R.LIST_UNSUBSCRIBE, "List-Unsubscribe header"),
        (R.LIST_UNSUBSCRIBE, "List-Unsubscribe-Post header"),
        (R.UNSUBSCRIBE_LINK, "opt-out link to https://shop.example/newsletter/unsubscribe?u=abc123"),
        (R.TRACKING_PIXEL, "image of 1x1 px from https://track.mailer.example/open/abc123.gif"),
        (R.HTTP_IMAGE, "http: image http://cdn.shop.example/logo.png"),
        (R.FOREIGN_LINK, "link to https://shop.example/sale"),
        (R.EMAIL_ADDRESS, "e-mail address service@shop.example"),
        (R.PHONE_NUMBER, "phone number +49 30 1234 5678"),
        (R.EMOJI, "emoji \U0001f381 (wrapped present) in the subject"),
        (R.EMOJI, "emoji \U0001f389 (party popper) in the text"),
        (R.INCENTIVE_WORDING, 'wording "coupon code"'),
    }
    # Each finding names the line of the message it is on (the file as lint reads it).
    lines = (FIXTURES / "en_marketing.eml").read_bytes().split(b"\n")
    assert lines[found[(R.LIST_UNSUBSCRIBE, "List-Unsubscribe header")].line - 1].startswith(b"List-Unsubscribe:")
    assert b"track.mailer" in lines[found[(R.TRACKING_PIXEL, "image of 1x1 px from https://track.mailer.example/open/abc123.gif")].line - 1]
    assert b"+49 30 1234" in lines[found[(R.PHONE_NUMBER, "phone number +49 30 1234 5678")].line - 1]
    assert found[(R.LIST_UNSUBSCRIBE, "List-Unsubscribe header")].action is ContentAction.REMOVE
    assert found[(R.INCENTIVE_WORDING, 'wording "coupon code"')].action is ContentAction.LOG


@pytest.mark.parametrize(
    ("name", "phrases"),
    [
        ("en_incentive.eml", {"If you are happy with", "five-star review", "In exchange for your review",
                              "before you leave a review"}),
        ("de_incentive.eml", {"Als Dankeschön für Ihre Bewertung", "Gutscheincode", "5-Sterne-Bewertung",
                              "Bewertung zu ändern"}),
        ("fr_incentive.eml", {"Si vous êtes satisfait", "avis 5 étoiles", "En échange de votre avis", "code promo",
                              "modifier votre avis"}),
        ("it_incentive.eml", {"Se è soddisfatto", "recensione a 5 stelle", "in cambio della sua recensione",
                              "buono sconto", "rimuovere la recensione"}),
        ("es_incentive.eml", {"Si está satisfecho", "reseña de 5 estrellas", "A cambio de su reseña",
                              "código de descuento", "eliminar su reseña"}),
    ],
)  # fmt: skip
def test_incentive_wording_in_five_languages_is_logged(name: str, phrases: set[str]) -> None:
    verdict = judge_message((FIXTURES / name).read_bytes(), DEFAULTS, proactive=True)
    assert {f.evidence for f in verdict.findings} == {f'wording "{p}"' for p in phrases}
    assert {f.action for f in verdict.findings} == {ContentAction.LOG}
    assert not verdict.refused


def test_wrapped_phrase_is_found_on_its_first_line() -> None:
    raw = (FIXTURES / "en_incentive.eml").read_bytes()
    verdict = judge_message(raw, DEFAULTS, proactive=True)
    line = next(f.line for f in verdict.findings if "five-star" in f.evidence)
    assert raw.split(b"\n")[line - 1].strip().endswith(b"five-star")


def test_wording_phrases_can_be_replaced_and_extended() -> None:
    replaced = ContentSettings(phrases=("free sample",), extra_phrases=("bonus points",))
    raw = message("Get a free sample and bonus points. If you are happy with it, leave a 5-star review.")
    evidence = {f.evidence for f in judge_message(raw, replaced, True).findings if f.rule is R.INCENTIVE_WORDING}
    assert evidence == {'wording "free sample"', 'wording "bonus points"'}
    only_de = ContentSettings(languages=("de",))
    assert R.INCENTIVE_WORDING not in judged(message("leave a 5-star review"), only_de)
    assert R.INCENTIVE_WORDING in judged(message("eine 5-Sterne-Bewertung"), only_de)


def test_reply_with_list_unsubscribe_only_loses_the_header() -> None:
    verdict = judge_message((FIXTURES / "en_reply_list_unsubscribe.eml").read_bytes(), DEFAULTS, proactive=False)
    assert [(f.rule, f.action, f.header) for f in verdict.findings] == [
        (R.LIST_UNSUBSCRIBE, ContentAction.REMOVE, "List-Unsubscribe")
    ]


def test_quoted_buyer_text_is_not_judged_unless_configured() -> None:
    # The buyer's own emoji and phone number in the quoted question are no finding of the seller's reply.
    strict = ContentSettings(address_domains=DEFAULT_RELAY_DOMAINS, skip_quoted=False)
    assert rules_found("en_reply_list_unsubscribe.eml", strict, proactive=False) == {
        R.LIST_UNSUBSCRIBE, R.EMOJI, R.PHONE_NUMBER
    }  # fmt: skip


def test_attachments_are_measured_and_typed() -> None:
    assert findings("en_attachments.eml", proactive=False) == {
        (R.ATTACHMENT_TYPE, "attachment assembly.zip (application/zip)")
    }
    zips_ok = ContentSettings(attachment_types=("application/pdf", "application/zip"))
    assert findings("en_attachments.eml", zips_ok, proactive=False) == set()
    small = ContentSettings(attachment_types=("application/*",), max_attachment_bytes=4000)
    assert rules_found("en_attachments.eml", small, proactive=False) == {R.ATTACHMENT_SIZE}


def test_attachment_over_10_mb_is_refused_without_being_kept() -> None:
    blob = base64.encodebytes(b"\x00" * 10_500_000).decode()
    raw = message(
        "--m\r\nContent-Type: text/plain\r\n\r\nInvoice for 302-1234567-1234567\r\n"
        "--m\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: attachment; filename=big.pdf\r\n\r\n{blob}--m--\r\n",
        content_type='multipart/mixed; boundary="m"',
    )
    headers, body, first = split_message(raw)
    view = read_body(headers, body, first, DEFAULTS)
    assert [a.size for a in view.attachments] == [10_500_000]
    assert len(view.texts) == 1 and not view.truncated
    verdict = judge_content(DEFAULTS, headers, view, proactive=False)
    assert [(f.rule, f.evidence) for f in verdict.findings] == [
        (R.ATTACHMENT_SIZE, "attachments of 10.5 MB in total (1 parts; limit 10.0 MB)")
    ]


def test_octet_stream_attachment_is_typed_by_its_file_name() -> None:
    raw = message(
        "--m\r\nContent-Type: text/plain\r\n\r\n302-1234567-1234567\r\n--m\r\n"
        'Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="label.pdf"\r\n\r\n'
        "%PDF-1.4\r\n--m\r\nContent-Type: image/gif\r\nContent-Disposition: inline\r\n\r\nGIF89a\r\n--m--\r\n",
        content_type='multipart/mixed; boundary="m"',
    )
    assert {f.evidence for f in judge_message(raw, DEFAULTS, False).findings} == {"attachment (image/gif)"}


# -- single rules, with their near misses --------------------------------------------------------------


def test_missing_order_id_only_for_proactive_messages() -> None:
    assert rules_found("en_critical_no_order_id.eml") == {R.MISSING_ORDER_ID}
    assert rules_found("en_critical_no_order_id.eml", proactive=False) == set()
    assert rules_found("en_emoji_subject.eml") == {R.MISSING_ORDER_ID, R.EMOJI}


def test_order_id_in_the_body_satisfies_the_rule_in_every_encoding() -> None:
    for name in ("fr_review_base64.eml", "de_review_multipart.eml", "it_review_html.eml"):
        raw = (FIXTURES / name).read_bytes()
        headers, body, first = split_message(raw)
        no_subject = [h for h in headers if h.name.casefold() != "subject"]
        view = read_body(no_subject, body, first, DEFAULTS)
        assert judge_content(DEFAULTS, no_subject, view, proactive=True).findings == (), name


def test_order_id_past_the_bound_is_not_seen_and_the_finding_says_so() -> None:
    settings = ContentSettings(max_bytes=4096)
    raw = message("x" * 70 + "\n" + ("filler line\n" * 600) + "order 302-1234567-1234567\n", subject="Hello")
    verdict = judge_message(raw, settings, proactive=True)
    assert verdict.truncated
    assert [f.evidence for f in verdict.findings] == [
        "no order id (NNN-NNNNNNN-NNNNNNN) in the subject or the text (text read up to 4096 bytes)"
    ]


@pytest.mark.parametrize(
    "text",
    [
        "Tel.: 030 1234567", "Telefon: +49 (0)30 123 45 67", "call +1 (555) 010-0199", "phone 555-010-0199",
        "WhatsApp 0151 23456789", "Téléphone : 01 23 45 67 89", "0044 20 7946 0018",
    ],
)  # fmt: skip
def test_phone_numbers_are_found(text: str) -> None:
    assert judged(message(f"Hello,\n{text}\n")) == {R.PHONE_NUMBER}


@pytest.mark.parametrize(
    "text",
    [
        "order 302-1234567-1234567", "order 002-1234567-1234567", "dated 30.10.2026 at 14:30",
        "invoice 2026-000123", "1.299,00 EUR", "tracking 00340434161234567890", "10115 Berlin",
        "EAN 4006381333931", "size 42-44", "ISBN 978-3-16-148410-0", "between 2024-01-05 and 2024-02-01",
        # identifiers with digit runs (a token in a subject once read as an international number)
        "ticket fault-review-sendmail-0087431b6802", "ref 00123456789abc", "id x0049301234567",
    ],
)  # fmt: skip
def test_numbers_that_are_not_phone_numbers_pass(text: str) -> None:
    assert judged(message(f"Hello,\n{text}\n")) == set()


def test_email_addresses_but_not_the_buyers_relay_address() -> None:
    assert judged(message("write to help@shop.example")) == {R.EMAIL_ADDRESS}
    assert judged(message("On Monday q7x2m4k9z1bc3de@marketplace.amazon.de wrote:")) == set()
    html = '<p><a href="mailto:help@shop.example?subject=Order">contact us</a></p>'
    assert judged(message(html, "text/html")) == {R.EMAIL_ADDRESS}
    assert judged(message("the handle @shop_example and user at shop dot example")) == set()


@pytest.mark.parametrize("text", ["Thanks 😀", "Sunny ☀ day", "✅ shipped", "❤", "🇩🇪", "Best wishes ✨"])
def test_emojis_are_found(text: str) -> None:
    assert judged(message(text)) == {R.EMOJI}


@pytest.mark.parametrize("text", ["1.299,00 €", "© 2026 Shop™ Brand®", "Size 42 → 44 • blue – “quoted” …", "Café Müller ß"])
def test_typography_is_no_emoji(text: str) -> None:
    assert judged(message(text)) == set()


def test_emoji_in_an_encoded_subject() -> None:
    subject = "=?UTF-8?B?" + base64.b64encode("Order 302-1234567-1234567 🚚".encode()).decode() + "?="
    found = judge_message(message("Hello", subject=subject), DEFAULTS, True).findings
    assert [(f.rule, f.line) for f in found] == [(R.EMOJI, 3)]


def test_links_allowed_to_amazon_and_carriers_only() -> None:
    assert judged(message("See https://www.amazon.de/gp/your-account and https://nolp.dhl.de/x?id=1")) == set()
    assert judged(message("See https://www.shop.example/manual.pdf")) == {R.FOREIGN_LINK}
    assert judged(message("See www.shop.example/manual")) == {R.FOREIGN_LINK}
    # label-aligned: a look-alike host is no Amazon site
    assert judged(message("See https://amazon.de.shop.example/ and https://notamazon.de/")) == {R.FOREIGN_LINK}
    assert judged(message("See https://192.0.2.1/x")) == {R.FOREIGN_LINK}
    with_shop = ContentSettings(link_domains=DEFAULTS.link_domains + ("shop.example",))
    assert judged(message("See https://www.shop.example/manual.pdf"), with_shop) == set()
    html = '<a href="#top">top</a> <a href="manual.html">relative</a> <a href="javascript:alert(1)">x</a>'
    assert [f.evidence for f in judge_message(message(html, "text/html"), DEFAULTS, True).findings] == [
        "link to javascript:alert(1)"
    ]


def test_unsubscribe_links_in_five_languages() -> None:
    for label in ("Unsubscribe", "Newsletter abbestellen", "Se désabonner", "Disiscriviti", "Darse de baja"):
        html = f'<p><a href="https://www.amazon.de/x">{label}</a></p>'
        assert judged(message(html, "text/html")) == {R.UNSUBSCRIBE_LINK}, label
    assert judged(message("To opt out: https://www.amazon.de/prefs")) == {R.UNSUBSCRIBE_LINK}
    # Unsubscribe wording without a link (a buyer's question restated) is no link.
    assert judged(message("You asked how to unsubscribe from Amazon's messages.")) == set()


def test_tracking_pixels_and_http_images() -> None:
    def images(tag: str) -> set[R]:
        return judged(message(f"<p>Hello</p>{tag}", "text/html"))

    assert images('<img src="https://a.example/p.gif" width="1" height="1">') == {R.TRACKING_PIXEL}
    assert images('<img src="https://a.example/p.gif" style="width:2px;height:2px">') == {R.TRACKING_PIXEL}
    assert images('<img src="https://t.example/wf/open?upn=abc">') == {R.TRACKING_PIXEL}
    assert images('<img src="http://a.example/logo.png" width="120">') == {R.HTTP_IMAGE}
    assert images('<img src="https://a.example/photo.jpg" width="300" height="200">') == set()
    assert images('<img src="cid:logo@shop" width="1" height="1">') == set()


def test_html_entities_and_hidden_markup_are_read_like_a_reader() -> None:
    html = "<style>a{color:red}/* +49 30 1234567 */</style><p>Write to help&#64;shop.example</p><!-- 😀 -->"
    assert judged(message(html, "text/html")) == {R.EMAIL_ADDRESS}


def test_rules_that_are_off_find_nothing_and_read_nothing() -> None:
    off = ContentSettings(actions=tuple((rule, ContentAction.OFF) for rule in ContentRule))
    assert judge_message((FIXTURES / "en_marketing.eml").read_bytes(), off, True).findings == ()
    assert wanted_headers(off) == frozenset()
    headers = [HeaderField("Subject", "no order id")]
    assert not needs_body(off, headers, proactive=True)
    only_header = off.with_actions(list_unsubscribe=ContentAction.REMOVE)
    assert wanted_headers(only_header) == {"list-unsubscribe", "list-unsubscribe-post"}
    assert not needs_body(only_header, headers, proactive=True)
    only_order = off.with_actions(missing_order_id=ContentAction.REFUSE)
    assert needs_body(only_order, headers, proactive=True)
    assert not needs_body(only_order, [HeaderField("Subject", "302-1234567-1234567")], proactive=True)
    assert not needs_body(only_order, headers, proactive=False)


def test_findings_per_rule_are_bounded_and_evidence_is_cut() -> None:
    links = " ".join(f"https://s{i}.shop.example/{'x' * 300}" for i in range(50))
    found = judge_message(message(links), DEFAULTS, True).findings
    assert len(found) == 10
    assert all(len(f.evidence) <= 120 for f in found)


# -- the scanner itself ----------------------------------------------------------------------------------


def test_split_message_numbers_header_fields_and_body() -> None:
    headers, body, first = split_message(b"From x\nA: 1\nB: two\n  folded\nC: 3\n\nbody line\n")
    assert [(h.name, h.value, h.line) for h in headers] == [("A", "1", 2), ("B", "two\n  folded", 3), ("C", "3", 5)]
    assert (body, first) == (b"body line\n", 7)


CHUNKED = [(FIXTURES / name).read_bytes() for name in ("en_marketing.eml", "en_attachments.eml", "de_review_multipart.eml")]


def _scan(raw: bytes, cuts: list[int]) -> tuple[object, object]:
    headers, body, first = split_message(raw)
    whole = read_body(headers, body, first, DEFAULTS)
    scanner = BodyScanner(headers, first, DEFAULTS.max_bytes)
    points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    for start, end in zip(points, points[1:]):
        scanner.feed(body[start:end])
    return scanner.finish(), whole


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(CHUNKED) - 1), cuts=st.lists(st.integers(min_value=0, max_value=12000), max_size=12))
def test_chunking_never_changes_what_is_read(which: int, cuts: list[int]) -> None:
    chunked, whole = _scan(CHUNKED[which], cuts)
    assert chunked == whole


@pytest.mark.parametrize("raw", CHUNKED)
def test_one_byte_chunks_read_the_same(raw: bytes) -> None:
    headers, body, first = split_message(raw)
    chunked, whole = _scan(raw, list(range(len(body))))
    assert chunked == whole
    assert whole.attachments or whole.texts  # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    content_type=st.sampled_from(["text/plain", "text/html", 'multipart/mixed; boundary="b"', "multipart/alternative",
                                  "application/pdf", 'multipart/related; boundary=""', "text/html; charset=x-unknown"]),
    encoding=st.sampled_from(["", "base64", "quoted-printable", "8bit", "x-uuencode"]),
    body=st.binary(max_size=3000) | st.text(alphabet="--b\r\n=<>a@&#;: +0123456789é😀", max_size=3000).map(str.encode),
)  # fmt: skip
def test_any_body_gives_findings_never_an_exception(content_type: str, encoding: str, body: bytes) -> None:
    headers = [HeaderField("Content-Type", content_type, 1), HeaderField("Content-Transfer-Encoding", encoding, 2),
               HeaderField("Subject", "=?utf-8?q?=FF?= broken", 3)]  # fmt: skip
    view = read_body(headers, body, 5, ContentSettings(max_bytes=4096))
    verdict = judge_content(DEFAULTS, headers, view, proactive=True)
    assert all(f.rule in ContentRule and f.action is not ContentAction.OFF for f in verdict.findings)


def test_a_line_without_end_does_not_grow_memory() -> None:
    scanner = BodyScanner([HeaderField("Content-Type", "application/octet-stream")], 3, 4096)
    for _ in range(40):
        scanner.feed(b"A" * 65536)
    view = scanner.finish()
    assert view.attachments[0].size == 40 * 65536  # counted in pieces, nothing kept
    assert len(scanner._pending) == 0
