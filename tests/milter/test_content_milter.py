"""The content rules in the real milter process, and ``amzguard lint`` agreeing with it on every fixture.

The milter is driven over the milter protocol as Postfix drives it (tests/support/fake_mta.py): each
fixture's header fields as the file has them, its body in 64 KiB chunks. ``amzguard lint`` runs as a
process on the same files with the same config and store, just before the milter sees each message;
both must decide the same for every recipient, name the same findings, refuse with the same text and
delete the same header fields.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from miltertest import constants as c

from amzguard.content import ContentRule, split_message
from tests.support.fake_mta import LOCAL_PEER, SMTP_PEER, FakeMta
from tests.support.milter_process import MilterProcess, write_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "content"
FIXTURE_TOKEN = "fixture-review-token-0123456789"
"""The review secret in the fixtures' X-Amzguard-Channel fields (made up)."""
MILTER_CHUNK = 65535


def content_config(tmp_path: Path, socket: str, **sections: object) -> Path:
    return write_config(
        tmp_path / "content.yml", socket,
        channels={"review": {"enabled": True, "token": FIXTURE_TOKEN}},
        store={"path": str(tmp_path / "store.sqlite")}, **sections,
    )  # fmt: skip


@pytest.fixture(scope="module")
def milter(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("content-milter")
    socket = f"unix:{tmp_path}/content.sock"
    config = content_config(tmp_path, socket)
    config.chmod(0o600)
    proc = MilterProcess(config, socket, tmp_path / "content.log").start()
    yield proc
    assert proc.stop() == 0, proc.log_text()


def lint(config: Path, files: list[Path], *options: str) -> tuple[int, list[dict]]:
    done = subprocess.run(
        [sys.executable, "-m", "amzguard", "lint", "-c", str(config), "--format", "json", *options, *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def send(milter: MilterProcess, raw: bytes, sender: str, recipients: list[str], peer, queue_id: str):
    headers, body, _ = split_message(raw)
    chunks = [body[i : i + MILTER_CHUNK] for i in range(0, len(body), MILTER_CHUNK)] or [b""]
    with FakeMta(milter.socket) as mta:
        fields = [(h.name, h.value) for h in headers]
        return mta.message(f"<{sender}>", [f"<{r}>" for r in recipients], headers=fields, body=chunks,
                           peer=peer, queue_id=queue_id, base_headers=())  # fmt: skip


def decision_line(milter: MilterProcess, queue_id: str, recipient: str) -> str:
    text = milter.wait_log(f"{queue_id}: from=")
    return next(line for line in text.splitlines() if f"{queue_id}: from=" in line and f"rcpt=<{recipient}>" in line)


FILES = sorted(FIXTURES.glob("*.eml"))


@pytest.mark.parametrize(("path_name", "peer", "options"), [("smtp", SMTP_PEER, ()), ("sendmail", LOCAL_PEER, ("--sendmail",))])
def test_lint_and_the_milter_agree_on_every_fixture(milter: MilterProcess, path_name: str, peer, options) -> None:
    seen_reasons: set[str] = set()
    for number, file in enumerate(FILES):
        # lint first, on the store as it is now; then the milter (which may record a review request)
        status, [result] = lint(milter.config, [file], *options)
        assert status == (0 if result["clean"] else 1)
        queue_id = f"4C{path_name[:2].upper()}{number:03d}"
        _, eom = send(milter, file.read_bytes(), result["sender"], [r["address"] for r in result["recipients"]],
                      peer, queue_id)  # fmt: skip
        *edits, final = eom
        where = f"{file.name} ({path_name})"
        for recipient in result["recipients"]:
            line = decision_line(milter, queue_id, recipient["address"])
            assert f" path={path_name} " in line, where
            assert f"channel={recipient['channel']} decision={recipient['outcome']} reason={recipient['reason']}" in line, (where, line)
            seen_reasons.add(recipient["reason"])
            logged = re.search(r" content=\[(.*)\]$", line)
            expected = [f"{f['action']} {f['rule']}: {f['evidence']}" for f in result["findings"]]
            judged = recipient["channel"] != "none" and recipient["reason"] in ("channel", "content", "no-order-id")
            # Content is judged for a buyer a channel grants (a vetoed one, e.g. a duplicate, keeps its veto).
            assert sorted(logged[1].split("; ") if logged else []) == (sorted(expected) if judged else []), (where, line)
        if result["refused_whole"] is not None:
            assert final.command == c.SMFIR_REPLYCODE and final.fields["smtpcode"] == "550", where
            assert final.fields["text"] == f"5.7.1 {result['refused_whole']}", where
        else:
            assert final.command == c.SMFIR_ACCEPT, (where, eom)
            changed = [edit.fields for edit in edits if edit.command == c.SMFIR_CHGHEADER]
            deleted = {edit["name"] for edit in changed if not edit["value"]}
            assert deleted - {"X-Amzguard-Channel"} == set(result["removed_headers"]), where
            # A marked buyer's visible To:/Cc: rewritten (issue 12 item 2), as lint says.
            rewritten = [{"name": e["name"], "index": e["index"], "value": e["value"]} for e in changed if e["value"]]
            assert rewritten == result["rewritten_headers"], where
    # The fixtures exercise every kind of outcome of the content rules.
    assert {"content", "channel"} <= seen_reasons


def test_clean_review_passes_and_marketing_template_is_refused_with_its_findings(milter: MilterProcess) -> None:
    raw = (FIXTURES / "en_plain_review.eml").read_bytes().replace(b"302-1234567-1234567", b"302-9999999-1111111")
    _, eom = send(milter, raw, "shop@shop.example", ["q7x2m4k9z1bc3de@marketplace.amazon.com"], SMTP_PEER, "4CLEAN001")
    assert eom[-1].command == c.SMFIR_ACCEPT
    assert [e.fields["name"] for e in eom[:-1]] == ["X-Amzguard-Channel"]  # only the tag goes
    _, eom = send(milter, (FIXTURES / "en_marketing.eml").read_bytes(), "shop@shop.example",
                  ["q7x2m4k9z1bc3de@marketplace.amazon.com"], SMTP_PEER, "4MARKET01")  # fmt: skip
    text = eom[-1].fields["text"]
    assert text.startswith("5.7.1 <q7x2m4k9z1bc3de@marketplace.amazon.com>: Content that Amazon forbids")
    assert "unsubscribe-link: opt-out link to https://shop.example/newsletter/unsubscribe?u=abc123" in text
    assert text.endswith("(and 6 more)")  # 10 refusing findings, 4 named
    line = decision_line(milter, "4MARKET01", "q7x2m4k9z1bc3de@marketplace.amazon.com")
    assert "decision=refuse reason=content recognised_by=tag content=[remove list-unsubscribe: List-Unsubscribe header;" in line
    # Counted once per message, by rule and action (pre-created series exist at 0 for every pair).
    assert milter.metric("amzguard_content_findings_total", rule="tracking-pixel", action="refuse") >= 1
    assert milter.metric("amzguard_content_findings_total", rule="list-unsubscribe", action="remove") >= 1
    assert milter.metric("amzguard_content_findings_total", rule="attachment-size", action="log") == 0


def test_mail_no_channel_grants_skips_its_body(milter: MilterProcess) -> None:
    raw = (FIXTURES / "en_marketing.eml").read_bytes()
    with FakeMta(milter.socket) as mta:
        headers, body, _ = split_message(raw)
        fields = [(h.name, h.value) for h in headers if h.name != "X-Amzguard-Channel"]
        _, eom = mta.message("<shop@shop.example>", ["<owner@shop.test>"], headers=fields, body=[body, body],
                             base_headers=())  # fmt: skip
        assert [r.command for r in mta.body_replies] == [c.SMFIR_SKIP]  # not a buyer: the body is not read
    assert eom[-1].command == c.SMFIR_ACCEPT  # and the content rules do not touch it


def test_rules_off_read_no_body(tmp_path: Path) -> None:
    socket = f"unix:{tmp_path}/off.sock"
    off = {rule.value.replace("-", "_"): "off" for rule in ContentRule}
    config = content_config(tmp_path, socket, content={"rules": off})
    with MilterProcess(config, socket, tmp_path / "off.log") as proc:
        raw = (FIXTURES / "en_marketing.eml").read_bytes().replace(b"302-7654321-7654321", b"302-7654321-0000001")
        headers, body, _ = split_message(raw)
        with FakeMta(proc.socket) as mta:
            _, eom = mta.message("<shop@shop.example>", ["<q7x2m4k9z1bc3de@marketplace.amazon.com>"],
                                 headers=[(h.name, h.value) for h in headers], body=[body], base_headers=())  # fmt: skip
            assert [r.command for r in mta.body_replies] == [c.SMFIR_SKIP]  # order id in the subject
        assert eom[-1].command == c.SMFIR_ACCEPT


def test_oversized_attachment_refused_without_the_milter_growing(milter: MilterProcess) -> None:
    import base64

    blob = base64.encodebytes(bytes(10_200_000))
    raw = (
        b"From: shop@shop.example\r\nTo: q7x2m4k9z1bc3de@marketplace.amazon.com\r\nSubject: Re: your invoice\r\n"
        b"In-Reply-To: <buyer-big@marketplace.amazon.com>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="big"\r\n\r\n--big\r\nContent-Type: text/plain\r\n\r\n'
        b"Here is the manual for order 302-1234567-1234567.\r\n--big\r\nContent-Type: application/pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=manual.pdf\r\n\r\n"
        + blob.replace(b"\n", b"\r\n") + b"--big--\r\n"
    )
    _, eom = send(milter, raw, "shop@shop.example", ["q7x2m4k9z1bc3de@marketplace.amazon.com"], SMTP_PEER, "4BIGATT01")
    assert eom[-1].fields["text"].endswith(
        "attachment-size: attachments of 10.2 MB in total (1 parts; limit 10.0 MB)"
    ), eom[-1].fields
