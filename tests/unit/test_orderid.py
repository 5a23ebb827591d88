"""Order ids in subjects and in bodies as mailers really encode them (made-up ids)."""

from __future__ import annotations

import base64
import quopri

import pytest

from amzguard.orderid import find_order_id, order_id_in_body

ORDER = "302-1234567-7654321"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Order {ORDER}: how did we do?", ORDER),
        (f"[{ORDER}]", ORDER),
        (f"#{ORDER}.", ORDER),
        ("orders 028-1111111-2222222 and 302-1234567-7654321", "028-1111111-2222222"),
        ("1302-1234567-7654321", None),  # part of a longer number
        ("302-1234567-76543210", None),
        ("302-123456-7654321", None),
        ("302 1234567 7654321", None),
        ("", None),
    ],
)
def test_find_order_id(text: str, expected: str | None) -> None:
    assert find_order_id(text) == expected


def test_plain_body() -> None:
    body = f"Hello,\r\nthank you for your order {ORDER}.\r\n".encode()
    assert order_id_in_body([("Content-Type", "text/plain; charset=utf-8")], body) == ORDER
    assert order_id_in_body([], body) == ORDER


def test_quoted_printable_with_a_soft_break_inside_the_id() -> None:
    body = b"Bestellung 302-1234=\r\n567-7654321, vielen Dank f=C3=BCr Ihren Einkauf\r\n"
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Transfer-Encoding", "quoted-printable")]
    assert order_id_in_body(headers, body) == ORDER


def test_base64_body() -> None:
    body = base64.encodebytes(f"Votre commande {ORDER} est arrivée ?".encode())
    headers = [("Content-Type", 'text/plain; charset="utf-8"'), ("Content-Transfer-Encoding", "base64")]
    assert order_id_in_body(headers, body) == ORDER


def test_multipart_html_with_entities() -> None:
    html = f"<p>Ordine <b>302&#45;1234567&#8209;x</b> no; <span>{ORDER.replace('-', '&#45;')}</span></p>"
    part = quopri.encodestring(html.encode())
    body = (
        b"--b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + part + b"\r\n--b1--\r\n"
    )  # fmt: skip
    assert order_id_in_body([("Content-Type", 'multipart/alternative;\r\n\tboundary="b1"')], body) == ORDER


def test_cut_off_multipart_still_finds_the_id() -> None:
    body = f"--b1\r\nContent-Type: text/plain\r\n\r\nPedido {ORDER}\r\n--b1\r\nContent-Type: text/ht".encode()
    assert order_id_in_body([("Content-Type", 'multipart/mixed; boundary="b1"')], body) == ORDER


def test_no_id_and_odd_input() -> None:
    assert order_id_in_body([("Content-Type", "text/plain")], b"How was your purchase?") is None
    assert order_id_in_body([("Content-Type", "text/plain; charset=x-unknown")], ORDER.encode()) == ORDER
    assert order_id_in_body([("Content-Transfer-Encoding", "base64")], b"!!not base64!!") is None
    assert order_id_in_body([("Content-Type", "multipart/mixed")], b"\xff\xfe" + ORDER.encode()) == ORDER
