"""``amzguard lint`` as a process on the fixture files: output, line numbers, JSON, exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "content"
TOKEN = "fixture-review-token-0123456789"


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "amzguard.yml"
    path.write_text(yaml.safe_dump({"channels": {"review": {"enabled": True, "token": TOKEN}},
                                    "store": {"path": str(tmp_path / "store.sqlite")}}))  # fmt: skip
    path.chmod(0o600)
    return path


def lint(config: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "amzguard", "lint", "-c", str(config), *args],
                          input=stdin.decode() if stdin else None, capture_output=True, text=True, timeout=60)  # fmt: skip


def test_clean_review_request_exits_0(config: Path) -> None:
    done = lint(config, str(FIXTURES / "en_plain_review.eml"))
    assert done.returncode == 0, done.stderr
    name = str(FIXTURES / "en_plain_review.eml")
    assert f"{name}: <q7x2m4k9z1bc3de@marketplace.amazon.com>: deliver (reason channel, channel review)" in done.stdout
    assert f"{name}: message: accepted with these changes:" in done.stdout
    assert not (config.parent / "store.sqlite").exists()  # lint never creates the store


def test_marketing_template_lists_every_finding_with_its_line_and_exits_1(config: Path) -> None:
    file = str(FIXTURES / "en_marketing.eml")
    done = lint(config, file)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert f"{file}: <q7x2m4k9z1bc3de@marketplace.amazon.com>: refuse (reason content, channel review) (recognised by tag)" in lines
    assert f"{file}:8: remove: list-unsubscribe: List-Unsubscribe header" in lines
    assert f"{file}:43: refuse: tracking-pixel: image of 1x1 px from https://track.mailer.example/open/abc123.gif" in lines
    assert f"{file}:3: refuse: emoji: emoji \U0001f381 (wrapped present) in the subject" in lines
    assert any(line.startswith(f"{file}: message: refused whole: 550 5.7.1 <q7x2m4k9z1bc3de@") for line in lines)
    numbered = [int(line.split(":")[1]) for line in lines if line.split(":")[1].isdigit()]
    assert numbered == sorted(numbered)  # findings in file order


def test_json_and_several_files(config: Path) -> None:
    files = [str(FIXTURES / n) for n in ("en_plain_review.eml", "en_attachments.eml", "de_incentive.eml")]
    done = lint(config, "--format", "json", *files)
    assert done.returncode == 1
    plain, attachments, incentive = json.loads(done.stdout)
    assert plain["clean"] and plain["findings"] == [] and plain["order_id"] == "302-1234567-1234567"
    assert attachments["recipients"] == [{"address": "q7x2m4k9z1bc3de@marketplace.amazon.com", "outcome": "refuse",
                                          "reason": "content", "channel": "reply", "recognised_by": []}]  # fmt: skip
    assert attachments["findings"] == [{"rule": "attachment-type", "action": "refuse", "line": 79,
                                        "evidence": "attachment assembly.zip (application/zip)"}]  # fmt: skip
    assert {f["action"] for f in incentive["findings"]} == {"log"} and not incentive["clean"]
    assert incentive["refused_whole"] is None


def test_to_sender_and_sendmail_options(config: Path) -> None:
    file = str(FIXTURES / "en_marketing.eml")
    # To a shop address the message is nobody's business: clean.
    done = lint(config, "--to", "owner@shop.test", file)
    assert done.returncode == 0 and "deliver (reason not-buyer, channel none)" in done.stdout
    # From a sender the review channel does not allow, the tag does not count: plain buyer mail.
    allowed = yaml.safe_load(config.read_text())
    allowed["channels"]["review"]["allowed_senders"] = ["@shop.example"]
    allowed["channels"]["reply"] = allowed["channels"]["critical"] = {"allowed_senders": ["@shop.example"]}
    config.write_text(yaml.safe_dump(allowed))
    done = lint(config, "--sender", "other@elsewhere.example", "--sendmail", file)
    assert done.returncode == 1
    assert "refuse (reason buyer-mail, channel none)" in done.stdout


def test_errors_exit_2(config: Path, tmp_path: Path) -> None:
    done = lint(config, str(tmp_path / "missing.eml"))
    assert done.returncode == 2 and "cannot read" in done.stderr
    nobody = tmp_path / "nobody.eml"
    nobody.write_bytes(b"From: a@shop.example\r\nSubject: x\r\n\r\nbody\r\n")
    done = lint(config, str(nobody))
    assert done.returncode == 2 and "no recipient" in done.stderr
    # An error in one file wins over findings in another.
    done = lint(config, str(FIXTURES / "en_marketing.eml"), str(nobody))
    assert done.returncode == 2
    (tmp_path / "broken.yml").write_text("content: {rules: {emoji: maybe}}\n")
    done = subprocess.run([sys.executable, "-m", "amzguard", "lint", "-c", str(tmp_path / "broken.yml"), str(nobody)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "content.rules.emoji" in done.stderr


def test_stdin(config: Path) -> None:
    done = lint(config, "-", stdin=(FIXTURES / "en_plain_review.eml").read_bytes())
    assert done.returncode == 0 and done.stdout.startswith("-: from <shop@shop.example>")


def test_a_marked_buyer_shows_the_visible_to_rewrite(config: Path, tmp_path: Path) -> None:
    """issue 12 item 2: lint shows the To: rewrite the milter would make (text and JSON)."""
    source = (FIXTURES / "en_plain_review.eml").read_bytes()
    marked = source.replace(b"q7x2m4k9z1bc3de@marketplace.amazon.com", b"blacklisted-q7x2m4k9z1bc3de@marketplace.amazon.com")
    file = tmp_path / "marked.eml"
    file.write_bytes(marked)
    done = lint(config, str(file))
    assert done.returncode == 0, done.stderr
    rewrites = [line for line in done.stdout.splitlines() if "rewrite header To (field 1) to:" in line]
    assert len(rewrites) == 1 and rewrites[0].endswith("to: q7x2m4k9z1bc3de@marketplace.amazon.com"), done.stdout
    [result] = json.loads(lint(config, "--format", "json", str(file)).stdout)
    [rewrite] = result["rewritten_headers"]
    assert rewrite["name"] == "To" and "blacklisted-" not in rewrite["value"]


def test_the_daily_limit_line_at_todays_count(config: Path, tmp_path: Path) -> None:
    """issue 12 item 7: lint says what the daily limit would do, as explain does (text and JSON)."""
    from amzguard.policy import ProactiveSent
    from amzguard.store.sqlite import SqliteStore

    data = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**data, "limits": {"proactive_per_day": {"com": 1}}}))
    SqliteStore(tmp_path / "store.sqlite").record([ProactiveSent("com", 1, None)])
    name = str(FIXTURES / "en_plain_review.eml")
    held = ("daily limit: com 1 of 1 sent today (UTC), this message adds 1: the milter would hold the message "
            "(451 4.7.1) until a later UTC day")  # fmt: skip
    done = lint(config, name)
    assert f"{name}: {held}\n" in done.stdout, done.stdout
    [result] = json.loads(lint(config, "--format", "json", name).stdout)
    assert result["daily_limit"] == [held]
