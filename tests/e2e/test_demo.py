"""``python -m demo`` (``make demo``) on the real Postfix: every step ends as demo/story.py promises.

The demo runs once, in KEEP mode, so that its mail server is still there to be inspected: the promised
outcome of each step is checked here against the files the run left (amzguard's log, the maillog, the
sink, the maildirs, the opt-out register through the real CLI), not only against the demo's own verdict.
Then the command lines it prints for own messages are run, and SIGTERM must stop everything it started and
remove its directory. One Postfix instance serves all steps.
"""

from __future__ import annotations

import email
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

from demo.story import STORY, TAG_HEADER, Step, Via
from tests.e2e.harness import LOCAL_USERS, SinkMessage, parse_bounce

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0
FIELDS = ("channel", "decision", "reason")


@dataclass
class Run:
    proc: subprocess.Popen[str]
    report: dict
    stdout_path: Path
    markdown_path: Path

    @property
    def workdir(self) -> Path:
        return Path(self.report["workdir"])

    def step(self, key: str) -> dict:
        [entry] = [entry for entry in self.report["steps"] if entry["key"] == key]
        return entry

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _stop(proc: subprocess.Popen[str], timeout: float = 60) -> int:
    """SIGTERM to our own demo process (it stops what it started); SIGKILL its group only if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    base = tmp_path_factory.mktemp("demo")
    report_path, stdout_path = base / "demo.json", base / "demo.out"
    with open(stdout_path, "w") as stdout:
        args = ["--keep", "--json", str(report_path), "--markdown", str(base / "summary.md")]
        proc = subprocess.Popen([sys.executable, "-m", "demo", *args], cwd=REPO,
                                stdout=stdout, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not report_path.exists():
            assert proc.poll() is None, f"demo exited {proc.returncode}:\n{stdout_path.read_text()}"
            assert time.monotonic() < deadline, f"no report after {START_TIMEOUT} s:\n{stdout_path.read_text()}"
            time.sleep(0.1)
        yield Run(proc, json.loads(report_path.read_text()), stdout_path, base / "summary.md")
    finally:
        _stop(proc)


# -- reading what the run left on disk ---------------------------------------------------------------


def _sink(run: Run) -> list[SinkMessage]:
    directory = run.workdir / "postfix" / "sink"
    return [SinkMessage.parse(path, path.read_bytes()) for path in sorted(directory.iterdir()) if path.is_file()]


def _mailbox(run: Run, user: str) -> list[Message]:
    base = run.workdir / "postfix" / "mail" / user
    paths = [p for sub in ("new", "cur") if (base / sub).is_dir() for p in (base / sub).iterdir()]
    return [email.message_from_bytes(path.read_bytes()) for path in paths]


def _decision_fields(line: str) -> tuple[str, ...]:
    return tuple(re.search(rf"\b{name}=(\S+)", line).group(1) for name in FIELDS)  # type: ignore[union-attr]


def _queue_ids(run: Run, step: Step) -> set[str]:
    """The queue ids in the step's decision lines (``NOQUEUE`` for a refusal at RCPT)."""
    lines = [line for line in run.step(step.key)["seen"]["amzguard_lines"] if " decision=" in line]
    return {re.search(r"(?:^|: )([0-9A-Za-z]+): from=<", line).group(1) for line in lines}  # type: ignore[union-attr]


def _promised_fields(step: Step) -> list[tuple[str, ...]]:
    return sorted(_decision_fields(item) for item in step.expect.decisions)


def _subject(message: Message) -> str:
    return " ".join(str(message.get("Subject", "")).split())


# -- the story, step by step -------------------------------------------------------------------------


def test_the_demo_itself_reports_every_step_as_promised(run: Run) -> None:
    assert [entry["key"] for entry in run.report["steps"]] == [step.key for step in STORY]
    differing = {entry["key"]: entry["mismatches"] for entry in run.report["steps"] if entry["mismatches"]}
    assert differing == {}
    out = run.stdout()
    for number, step in enumerate(STORY, 1):
        assert f"── {number}/{len(STORY)}  {step.title} " in out
    assert f"{len(STORY)} of {len(STORY)} steps as the story promises" in out
    table = run.markdown_path.read_text().splitlines()
    assert len(table) == 2 + len(STORY) and "differs" not in "".join(table)
    assert [row.split(" | ")[1] for row in table[2:]] == [step.title for step in STORY]


@pytest.mark.parametrize("step", STORY, ids=[step.key for step in STORY])
def test_decisions_are_amzguards_own_log_lines(run: Run, step: Step) -> None:
    log = (run.workdir / "amzguard.log").read_text(errors="replace")
    lines = [line for line in run.step(step.key)["seen"]["amzguard_lines"] if " decision=" in line]
    assert all(line in log for line in lines), (lines, log[-3000:])
    assert sorted(_decision_fields(line) for line in lines) == _promised_fields(step)


@pytest.mark.parametrize("step", STORY, ids=[step.key for step in STORY])
def test_reply_and_maillog(run: Run, step: Step) -> None:
    seen = run.step(step.key)["seen"]
    maillog = (run.workdir / "postfix" / "maillog").read_text(errors="replace")
    queued = _queue_ids(run, step) - {"NOQUEUE"}
    assert len(queued) <= 1, seen["amzguard_lines"]
    assert seen["outcome"]["reply"] == step.expect.reply
    if step.via is Via.SENDMAIL:
        assert seen["replies"] == ["sendmail exited 0"]
    # A recipient refused at RCPT (by amzguard, or by Postfix before amzguard saw it) is never queued.
    for line in seen["replies"]:
        if line.startswith("RCPT TO:<"):
            rcpt = line[len("RCPT TO:<") : line.index(">")]
            assert re.search(rf"NOQUEUE: (milter-)?reject: RCPT from .*to=<{re.escape(rcpt)}>", maillog), rcpt
    if not queued:
        assert step.expect.reply is not None and step.expect.reply >= 500 and not step.expect.delivered
        return
    [queue_id] = queued
    if step.expect.reply == 250:
        assert any(line.startswith(f"end of data: 250 2.0.0 Ok: queued as {queue_id}") for line in seen["replies"])
    if not step.expect.delivered:
        # Refused whole at end of data: Postfix logs amzguard's refusal under the message's queue id.
        assert re.search(rf"{queue_id}: milter-reject: END-OF-MESSAGE .*: 5\.7\.1 ", maillog), queue_id
    else:
        assert re.search(rf"qmgr\[\d+\]: {queue_id}: removed$", maillog, re.MULTILINE), queue_id


@pytest.mark.parametrize("step", STORY, ids=[step.key for step in STORY])
def test_what_arrived_where(run: Run, step: Step) -> None:
    promised = {item.lower() for item in step.expect.delivered}
    relayed = [m for m in _sink(run) if _subject(m.message) == step.subject]
    arrived = {f"sink:{rcpt}".lower() for message in relayed for rcpt in message.rcpts}
    for message in relayed:
        assert TAG_HEADER.lower() not in (name.lower() for name, _ in message.headers)
    for user in LOCAL_USERS:
        local = [m for m in _mailbox(run, user) if m.get_content_type() != "multipart/report"]
        arrived |= {f"mailbox:{user}" for m in local if _subject(m) == step.subject}
    maillog = (run.workdir / "postfix" / "maillog").read_text(errors="replace")
    seen_ids = _queue_ids(run, step)
    for match in re.finditer(r"pipe\[\d+\]: (\w+): to=<[^>]*>, .*?relay=([^,]+), .*status=sent", maillog):
        if match.group(1) in seen_ids:
            arrived.add(f"pipe:{match.group(2)}")
    assert arrived == promised


@pytest.mark.parametrize("step", STORY, ids=[step.key for step in STORY])
def test_bounces_name_the_refused_buyers(run: Run, step: Step) -> None:
    named = set()
    for user in LOCAL_USERS:
        for message in _mailbox(run, user):
            if message.get_content_type() != "multipart/report":
                continue
            bounce = parse_bounce(message)
            if bounce.returned is None or _subject(bounce.returned) != step.subject:
                continue
            assert "Undelivered Mail Returned to Sender" in bounce.subject
            for recipient in bounce.recipients:
                assert recipient["Status"] == "5.7.1" and recipient["Action"] == "failed"
                address = recipient.get("Original-Recipient") or recipient["Final-Recipient"]
                named.add(f"{user}:{address.split(';', 1)[1].strip()}".lower())
    assert named == {item.lower() for item in step.expect.bounced}


def test_the_register_holds_what_the_story_taught(run: Run) -> None:
    done = subprocess.run([sys.executable, "-m", "amzguard", "optout", "list", "-c", run.report["config"]],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    learned = sorted(buyer.lower() for step in STORY for buyer in step.expect.learned)
    assert learned and sorted(done.stdout.split()) == learned


def test_metrics_count_the_story(run: Run) -> None:
    """What amzguard counted equals what the story promised, decision by decision, message by message."""
    promised = Counter(fields for step in STORY for fields in _promised_fields(step))
    counted = Counter()
    messages = 0.0
    for sample in run.report["metrics"]:
        labels = sample["labels"]
        if sample["name"] == "amzguard_recipients_total" and sample["value"]:
            counted[tuple(labels[name] for name in FIELDS)] += int(sample["value"])
        if sample["name"] == "amzguard_messages_total":
            messages += sample["value"]
    assert counted == promised
    assert messages == len(STORY)


# -- KEEP mode: own messages, then SIGTERM -----------------------------------------------------------


def test_printed_command_lines_reach_the_running_demo(run: Run) -> None:
    order_mail, review, sendmail = run.report["keep_commands"]
    out = run.stdout()
    assert all(command in out for command in (order_mail, review, sendmail))
    refused = subprocess.run(shlex.split(order_mail), capture_output=True, text=True, timeout=60, check=False)
    assert "<** 550 5.7.1 <blacklisted-1001@amazon.fr>" in refused.stdout, refused.stdout
    delivered = subprocess.run(shlex.split(review), capture_output=True, text=True, timeout=60, check=False)
    assert delivered.returncode == 0 and "250 2.0.0 Ok: queued as" in delivered.stdout, delivered.stdout
    assert subprocess.run(["bash", "-c", sendmail], timeout=60, check=False).returncode == 0
    deadline = time.monotonic() + 30
    while True:
        relayed = {rcpt for m in _sink(run) for rcpt in m.rcpts}
        bounced = [m for m in _mailbox(run, "shop") if m.get_content_type() == "multipart/report"
                   and "k3k3k3k3k3k3k3k3@marketplace.amazon.it" in str(parse_bounce(m).recipients)]  # fmt: skip
        if "1002@amazon.fr" in relayed and bounced:
            break
        assert time.monotonic() < deadline, (sorted(relayed), len(_mailbox(run, "shop")))
        time.sleep(0.1)
    assert "blacklisted-1002@amazon.fr" not in relayed and "1001@amazon.fr" not in relayed


def test_sigterm_stops_everything_it_started_and_removes_its_directory(run: Run) -> None:
    pids = [pid for pid in run.report["pids"].values() if pid]
    assert len(pids) == 3 and all(_pid_alive(pid) for pid in pids)
    assert _stop(run.proc) == 0
    assert not [pid for pid in pids if _pid_alive(pid)]
    assert not run.workdir.exists()
    assert f"removed {run.workdir}." in run.stdout()
