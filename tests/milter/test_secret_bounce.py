"""Bounces that carry the review secret are refused (secret_scan.py), driven over the milter protocol.

The bounce is shaped like the DSN Sendmail's MSP sent for a refused review request (recorded on 8.17.1.9,
tests/e2e/test_sendmail_exact.py does it for real): from <>, the original attached as message/rfc822.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from miltertest import constants as c

from tests.support.fake_mta import FakeMta
from tests.support.milter_process import REVIEW_TOKEN, MilterProcess, write_config

SHOP = "<support@shop.test>"
DSN_HEADERS = [("Subject", "Returned mail: see transcript for details"),
               ("Content-Type", 'multipart/report; report-type=delivery-status; boundary="B"')]  # fmt: skip


def dsn_body(original_headers: str) -> str:
    return ("--B\r\n\r\n   ----- The following addresses had permanent fatal errors -----\r\n"
            "<blacklisted-50001@amazon.fr>\r\n\r\n--B\r\nContent-Type: message/rfc822\r\n\r\n"
            f"{original_headers}Subject: order 305-7000001-4000001\r\n\r\nHow was your order?\r\n--B--\r\n")  # fmt: skip


TAGGED = dsn_body(f"From: support@shop.test\r\nX-Amzguard-Channel: review {REVIEW_TOKEN}\r\n")


def start(tmp: Path, name: str, **sections: object) -> MilterProcess:
    socket = f"unix:{tmp}/{name}.sock"
    return MilterProcess(write_config(tmp / f"{name}.yml", socket, **sections), socket, tmp / f"{name}.log").start()


@pytest.fixture(scope="module")
def milter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilterProcess]:
    proc = start(tmp_path_factory.mktemp("secret-bounce"), "enforce")
    yield proc
    proc.stop()


def test_a_bounce_with_the_secret_is_refused(milter: MilterProcess) -> None:
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<>", [SHOP], headers=DSN_HEADERS, body=TAGGED)
    assert eom[-1].command == c.SMFIR_REPLYCODE and eom[-1].fields["smtpcode"] == "550"
    assert REVIEW_TOKEN not in eom[-1].fields["text"]
    milter.wait_log("4XTESTQ1D: from=<> bounce carries the review channel's secret")


def test_the_secret_split_across_body_chunks_is_found(milter: MilterProcess) -> None:
    cut = TAGGED.index(REVIEW_TOKEN) + 5
    chunks = [TAGGED[:cut], TAGGED[cut:cut + 3], TAGGED[cut + 3:]]  # fmt: skip
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<>", [SHOP], headers=DSN_HEADERS, body=chunks)
    assert eom[-1].command == c.SMFIR_REPLYCODE and eom[-1].fields["smtpcode"] == "550"


def test_a_bounce_without_the_secret_passes(milter: MilterProcess) -> None:
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<>", [SHOP], headers=DSN_HEADERS, body=dsn_body("From: support@shop.test\r\n"))
    assert eom[-1].command == c.SMFIR_ACCEPT


def test_only_bounces_are_searched(milter: MilterProcess) -> None:
    # Mail from a sender (not a bounce) is judged as usual: the secret in a body is no tag.
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message(SHOP, ["<partner@example.org>"], body=TAGGED)
    assert eom[-1].command == c.SMFIR_ACCEPT


def test_monitor_mode_only_logs_it(tmp_path: Path) -> None:
    proc = start(tmp_path, "monitor", mode="monitor")
    try:
        with FakeMta(proc.socket) as mta:
            _, eom = mta.message("<>", [SHOP], headers=DSN_HEADERS, body=TAGGED)
        assert eom[-1].command == c.SMFIR_ACCEPT
        proc.wait_log("bounce carries the review channel's secret (a refused review request bounced by its "
                      "submitter): would refuse")  # fmt: skip
    finally:
        proc.stop()
