"""Send one step of the story through the real Postfix and record what really happened.

What counts as seen is read from where an admin would look: the SMTP replies, amzguard's own log (its
decision lines), Postfix's maillog, the sink's files (mail that left for the internet), the shop's
maildirs (local mail and bounces) and the opt-out register. A step is over when the queue is empty and
qmgr has logged the removal of every message queued for it (so each bounce has been delivered too);
waiting polls with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import email
import re
import time
from dataclasses import asdict, dataclass, field
from email.message import Message
from pathlib import Path

from amzguard.store import SqliteStore, StoreError
from demo.stack import DemoStack
from demo.story import SECRET_PLACEHOLDER, TAG_HEADER, Outcome, Step, Via
from tests.e2e.harness import LOCAL_USERS, SinkMessage, make_message, parse_bounce

DECISION_LINE = re.compile(
    r"(?:^|: )(?P<qid>[0-9A-Za-z]+): from=<.*?> rcpt=<(?P<rcpt>.*?)> (?P<fields>.*\bdecision=.*)$"
)
"""amzguard's line per recipient decision (decision_log.py), after its tag and level word (if any); the
fields are read by name, wherever they are, so a field added to the line does not break the demo."""
FIELD = {name: re.compile(rf"\b{name}=(\S+)") for name in ("channel", "decision", "reason")}
QUEUED = re.compile(r"postfix/qmgr\[\d+\]: (?P<qid>[0-9A-Za-z]+): from=<")
PIPE_DELIVERY = re.compile(r"postfix/pipe\[\d+\]: \w+: to=<[^>]*>, .*?relay=(?P<service>[^,]+), .*status=sent")
POSTFIX_SHOWN = re.compile(r"milter-reject|status=|sender non-delivery notification|reject:|warning:|error:|fatal:")
LOG_PREFIX = re.compile(r"^\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ ")
DELAYS = re.compile(r"delay=[\d.]+, delays=[\d./]+, ")

SENDMAIL_ARGS = ("-t", "-i")
"""PHP's default ``sendmail_path`` (``sendmail -t -i``); the harness adds ``-C`` for the instance and ``-f``."""

QUEUE_WAIT = 30.0


@dataclass
class Bounce:
    """The key lines of one DSN (Postfix's "Undelivered Mail Returned to Sender")."""

    mailbox: str
    subject: str
    recipients: list[dict[str, str]]
    """Per failed recipient: Final-Recipient, Original-Recipient (if any), Action, Status, Diagnostic-Code."""

    @property
    def named(self) -> list[str]:
        """The address each recipient block names: Original-Recipient (the buyer, when amzguard put a stand-in
        in its place), else Final-Recipient."""
        return [_dsn_address(r.get("Original-Recipient") or r.get("Final-Recipient", "")) for r in self.recipients]


@dataclass
class Seen:
    """Everything recorded for one step, and the step's outcome in the story's own terms."""

    key: str
    outcome: Outcome
    replies: list[str] = field(default_factory=list)
    """The SMTP replies that decided the shop system's fate (refused RCPTs, the reply to the message), or
    what sendmail(1) returned."""
    amzguard_lines: list[str] = field(default_factory=list)
    postfix_lines: list[str] = field(default_factory=list)
    arrivals: list[str] = field(default_factory=list)
    """Human-readable: what arrived where."""
    bounces: list[Bounce] = field(default_factory=list)
    register: list[str] = field(default_factory=list)
    """The opt-out register after the step (``address order source``)."""
    problems: list[str] = field(default_factory=list)
    """What went wrong beside the outcome: the tag or secret leaving, a message still queued, sendmail failing."""
    sink_files: list[str] = field(default_factory=list)
    mailbox_files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def mismatches(expected: Outcome, seen: Seen) -> list[str]:
    """Each way the run differed from the story: one line per outcome field, then the problems seen."""
    want, got = expected.normalised(), seen.outcome.normalised()
    lines = [
        f"{name}: promised {getattr(want, name)!r}, seen {getattr(got, name)!r}"
        for name in ("reply", "decisions", "delivered", "bounced", "learned")
        if getattr(want, name) != getattr(got, name)
    ]
    return lines + seen.problems


def build_message(step: Step, secret: str) -> bytes:
    """The message as the shop's software would hand it over (the review tag carries the demo's secret)."""
    if step.raw is not None:
        return step.raw.replace("\n", "\r\n").encode()
    headers = [(name, value.replace(SECRET_PLACEHOLDER, secret)) for name, value in step.headers]
    to = list(step.header_to or step.to)
    hidden = [rcpt for rcpt in step.to if rcpt not in to]
    if hidden and step.via is Via.SENDMAIL:  # `sendmail -t` finds them there; an SMTP client names them in RCPT only
        headers.append(("Bcc", ", ".join(hidden)))
    return make_message(step.sender, to, step.subject, step.body, extra_headers=headers)


class Observer:
    """Runs steps one after another on one stack; remembers what existed before each so only new things count."""

    def __init__(self, stack: DemoStack) -> None:
        self.stack = stack

    # -- reading the world -------------------------------------------------------------------------

    def _milter_log_size(self) -> int:
        path = self.stack.milter.log
        return path.stat().st_size if path.exists() else 0

    def _milter_log_since(self, offset: int) -> list[str]:
        with open(self.stack.milter.log, "rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace").splitlines()

    def _mail_files(self) -> set[Path]:
        """Every file in the sink and in the local maildirs."""
        postfix = self.stack.postfix
        files = {message.path for message in postfix.sink.messages()}
        for user in LOCAL_USERS:
            files.update(postfix.mailbox_paths(user))
        return files

    def register(self) -> list[str]:
        """The opt-out register, ``address order source`` per entry (read-only; absent store: empty)."""
        if not self.stack.store_path.exists():
            return []
        store = SqliteStore(self.stack.store_path)
        try:
            return [f"{e.buyer} {e.order_id or '-'} {e.source}" for e in store.entries()]
        except StoreError as exc:
            return [f"(register unreadable: {exc})"]
        finally:
            store.close()

    # -- one step ----------------------------------------------------------------------------------

    def run(self, step: Step) -> Seen:
        started = time.monotonic()
        postfix = self.stack.postfix
        before_files = self._mail_files()
        before_register = {line.split()[0] for line in self.register()}
        log_offset, milter_offset = postfix.log_offset(), self._milter_log_size()
        message = build_message(step, self.stack.secret)
        seen = Seen(step.key, Outcome())
        reply: int | None = None
        if step.via is Via.SMTP:
            result = postfix.smtp(step.sender, list(step.to), message)
            seen.replies = [
                f"RCPT TO:<{rcpt}> {code} {' '.join(text.split())}" for rcpt, (code, text) in result.rejected.items()
            ]
            final = result.data_reply if result.accepted else next(iter(result.rejected.values()), None)
            if final is None:
                seen.problems.append(f"SMTP transaction broke off: {result.error or result}")
            else:
                reply = final[0]
                if result.accepted:
                    seen.replies.append(f"end of data: {reply} {' '.join(final[1].split())}")
        else:
            done = postfix.sendmail(step.sender, [], message, extra_args=SENDMAIL_ARGS)
            seen.replies = [f"sendmail exited {done.returncode}" + (f": {done.stderr.strip()}" if done.stderr else "")]
            if done.returncode != 0:
                seen.problems.extend(seen.replies)
        self._settle(log_offset, seen)

        amzguard = [_strip_milter_prefix(line) for line in self._milter_log_since(milter_offset)]
        seen.amzguard_lines = [line for line in amzguard if line]
        matches = [DECISION_LINE.search(line) for line in seen.amzguard_lines]
        decisions = [_decision(match["fields"]) for match in matches if match]
        maillog = postfix.log_since(log_offset)
        seen.postfix_lines = [_abridged(line) for line in maillog.splitlines() if POSTFIX_SHOWN.search(line)]
        delivered: list[str] = []
        bounced: list[str] = []
        for sink in postfix.sink.messages():
            if sink.path not in before_files:
                self._relayed(sink, seen, delivered)
        for user in LOCAL_USERS:
            for path in postfix.mailbox_paths(user):
                if path not in before_files:
                    self._delivered_locally(path, user, seen, delivered, bounced)
        for match in PIPE_DELIVERY.finditer(maillog):
            delivered.append(f"pipe:{match['service']}")
            seen.arrivals.append(f"Postfix pipe {match['service']}: handed to `amzguard optout learn`, which exited 0")
        seen.register = self.register()
        learned = [line.split()[0] for line in seen.register if line.split()[0] not in before_register]
        seen.outcome = Outcome(reply, tuple(decisions), tuple(delivered), tuple(bounced), tuple(learned))
        seen.seconds = round(time.monotonic() - started, 2)
        return seen

    def _settle(self, log_offset: int, seen: Seen) -> None:
        """Wait until the step is over (see the module docstring); what does not happen in time is a problem.

        No wait for amzguard's lines: it writes each before it answers Postfix, and a message sendmail(1)
        handed over stays in the queue (maildrop, then incoming) until cleanup has its answer.
        """
        postfix = self.stack.postfix
        try:
            postfix.wait_queue_empty(timeout=QUEUE_WAIT)
        except TimeoutError:
            seen.problems.append(f"still queued after {QUEUE_WAIT:.0f} s: {postfix.queue()}")
            return
        deadline = time.monotonic() + 10
        while True:
            log = postfix.log_since(log_offset)
            if all(re.search(rf": {qid}: removed$", log, re.MULTILINE) for qid in QUEUED.findall(log)):
                return
            if time.monotonic() > deadline:
                seen.problems.append("the maillog does not show every queued message removed")
                return
            time.sleep(0.05)

    def _relayed(self, sink: SinkMessage, seen: Seen, delivered: list[str]) -> None:
        delivered.extend(f"sink:{rcpt}" for rcpt in sink.rcpts)
        tag = f"{TAG_HEADER} PRESENT" if _has_tag(sink.message) else f"no {TAG_HEADER} header"
        seen.arrivals.append(f"the internet (sink): to <{'>, <'.join(sink.rcpts)}>, "
                             f"Subject: {sink.message['Subject']}, {tag}")  # fmt: skip
        seen.sink_files.append(str(sink.path))
        if _has_tag(sink.message) or self.stack.secret.encode() in sink.data:
            seen.problems.append(f"the review tag or its secret left the MTA: {sink.path}")

    def _delivered_locally(self, path: Path, user: str, seen: Seen, delivered: list[str], bounced: list[str]) -> None:
        raw = path.read_bytes()
        parsed = email.message_from_bytes(raw)
        seen.mailbox_files.append(str(path))
        if parsed.get_content_type() == "multipart/report":
            report = parse_bounce(parsed)
            keys = ("Final-Recipient", "Original-Recipient", "Action", "Status", "Diagnostic-Code")
            blocks = [{k: " ".join(r[k].split()) for k in keys if k in r} for r in report.recipients]
            bounce = Bounce(user, " ".join(report.subject.split()), blocks)
            seen.bounces.append(bounce)
            bounced.extend(f"{user}:{address}" for address in bounce.named)
            seen.arrivals.append(f"{user}@shop.test's mailbox: a bounce, \"{bounce.subject}\"")
        else:
            delivered.append(f"mailbox:{user}")
            seen.arrivals.append(f"{user}@shop.test's mailbox: Subject: {parsed['Subject']}")
        if self.stack.secret.encode() in raw:
            seen.problems.append(f"the review secret reached a mailbox: {path}")


def _has_tag(message: Message) -> bool:
    return any(name.lower() == TAG_HEADER.lower() for name in message.keys())


def _decision(fields: str) -> str:
    values = {name: (m.group(1) if (m := pattern.search(fields)) else "?") for name, pattern in FIELD.items()}
    return f"channel={values['channel']} decision={values['decision']} reason={values['reason']}"


def _dsn_address(value: str) -> str:
    """``rfc822; a@b`` -> ``a@b``."""
    return value.split(";", 1)[-1].strip()


def _strip_milter_prefix(line: str) -> str:
    """``amzguard[812]: INFO: text`` -> ``INFO: text`` (the PID says nothing in a demo)."""
    return re.sub(r"^amzguard\[\d+\]: ", "", line.strip())


def _abridged(line: str) -> str:
    """A maillog line without its time stamp, host name and delay fields (the demo's blocks stay readable)."""
    return DELAYS.sub("", LOG_PREFIX.sub("", line.strip()))
