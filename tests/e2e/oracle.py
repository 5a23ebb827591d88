"""The differential ("oracle") test: a real MTA decides where each recipient spelling goes, amzguard must agree.

How it decides. Every case (one message to one generated spelling, often with a non-buyer co-recipient) is
sent twice: through an MTA without amzguard (Postfix) or with amzguard in monitor mode (Sendmail), the
*oracle*, and through the same MTA with amzguard enforcing, the *subject*. What the oracle's sink and
mailboxes received says where the MTA really routes the spelling (its final ``RCPT TO``, the ``ORCPT`` it
kept, or that it refused or bounced it itself); what the subject delivered is then checked against the
rules (see :func:`judge`):

* ``leak``: a buyer mailbox (relay domain, or marker in any case) got a message no channel granted;
* ``wrong-mailbox`` / ``duplicate``: a granted review request reached the buyer elsewhere than at the
  routed, unmarked mailbox, or more than once;
* ``lost-copy``: a non-buyer recipient the oracle delivered to got nothing, and nobody was told (no 5xx,
  no bounce naming it);
* ``false-bounce``: the sender was told the buyer was refused while the buyer got the message;
* ``secret``: the review secret in a delivered copy or a bounce;
* ``one-per-order`` / ``opt-out``: a second request for one order, or a request to an opted-out buyer,
  reached a buyer;
* ``stuck``: mail still queued after the batch (a milter configuration error, a tempfail loop);
* ``control``: a plainly spelt granted review request did not arrive exactly once (so the test cannot pass
  by refusing everything).

Only tagged review requests (valid secret, order id in the subject) may reach a buyer, and only a buyer the
MTA routes them to who is not in the opt-out register, for an order that has not reached a buyer yet; plain
order mail from the shop sender and untagged or wrongly tagged mail from the review sender never may. The
mailbox a spelling was built around plays no part in that: ``sendmail -t`` may split a spelling into
several header addresses, a routing form may lead elsewhere.

Cases are batched: one SMTP session carries up to :data:`SESSION_CASES` transactions, the queue is drained
once per phase, and messages are matched by their unique subject. Second requests for an order are sent in
a second phase, after the first ones were judged (pickup does not keep submission order).
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.utils
import json
import os
import random
import smtplib
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.e2e.harness import LOCAL_USERS, PostfixInstance, Sink, parse_bounce
from tests.e2e.sendmail_harness import SendmailInstance
from tests.support.milter_process import REVIEW_TOKEN
from tests.support.spellings import (
    MARKER,
    Chooser,
    Context,
    DrawChooser,
    Mailbox,
    RandomChooser,
    Spelling,
    build_mailbox,
    build_spelling,
    plain,
)

REPO = Path(__file__).resolve().parents[2]
SHOP_SENDER = "shop@shop.test"
REVIEW_SENDER = "support@shop.test"
TAG_HEADER = "X-Amzguard-Channel"
SESSION_CASES = 40
"""Transactions per SMTP session: a refused RCPT counts as an smtpd error, and the harness allows 100
before it slows a client down."""

#: Every relay domain amzguard ships, read from the shipped config (the sink side classifies with it).
RELAY_DOMAINS: tuple[str, ...] = tuple(
    yaml.safe_load((REPO / "etc" / "amzguard.yml").read_text())["buyers"]["relay_domains"])

# Buyers used again and again, so opt-outs and one-per-order meet them under many spellings (made up).
POOL: tuple[Mailbox, ...] = (
    Mailbox("k5m2p9x1z7w3v8q4", "marketplace.amazon.de", buyer=True, marked=False),
    Mailbox("blacklisted-20", "amazon.fr", buyer=True, marked=True),
    Mailbox("r4t6y8u0i2o4p6a8+123456", "marketplace.amazon.co.uk", buyer=True, marked=False),
    Mailbox("blacklisted-q7x2k9m4p1z8w3v5", "marketplace.amazon.de", buyer=True, marked=True),
    Mailbox("n1n1n1n1n1n1n1n1", "m.marketplace.amazon.co.jp", buyer=True, marked=False),
)
OPTED_OUT: tuple[Mailbox, ...] = (
    Mailbox("h8h8h8h8h8h8h8h8", "marketplace.amazon.co.uk", buyer=True, marked=False),
    Mailbox("blacklisted-77001", "amazon.de", buyer=True, marked=True),
    Mailbox("BLACKLISTED-o9o9o9o9o9o9o9o9", "marketplace.amazon.fr", buyer=True, marked=True),
)

KINDS = ("shop", "shop", "shop", "untagged", "untagged", "bad-token", "review", "review", "review", "opted-out")
"""shop: order mail from the shop sender (refused at RCPT on SMTP); untagged / bad-token: from the review
sender without the secret (decided at end of data); review: tagged; opted-out: tagged, to an opted-out
buyer."""
TAGGED = frozenset({"review", "repeat", "opted-out"})


# --------------------------------------------------------------------------- addresses
# Deliberately not amzguard's parser (address.py): the test must not share the code it checks. These read
# only final recipients, which the MTA writes canonically.


def split_address(text: str) -> tuple[str, str]:
    """(local part without quoting, domain lower-cased without trailing dots) of a final recipient.

    Only for what an MTA hands its next hop (canonical, no routing syntax left to interpret): split at
    the last ``@`` outside quotes.
    """
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    quoted = escaped = False
    split = -1
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == "@" and not quoted:
            split = i
    local, domain = (text, "") if split < 0 else (text[:split], text[split + 1 :])
    out: list[str] = []
    escaped = False
    for c in local:
        if escaped:
            out.append(c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c != '"':
            out.append(c)
    return "".join(out), domain.lower().rstrip(".")


def is_relay_domain(domain: str) -> bool:
    return any(domain == d or domain.endswith("." + d) for d in RELAY_DOMAINS)


def is_buyer(address: str) -> bool:
    local, domain = split_address(address)
    return is_relay_domain(domain) or local.casefold().startswith(MARKER)


def canonical(address: str) -> str:
    """The address as one string to compare: quoting gone, case-folded (``"a\\b"@X`` == ``ab@x``)."""
    local, domain = split_address(address)
    return f"{local}@{domain}".casefold()


def unmarked(address: str) -> str:
    """The address without the marker (as the review channel delivers it), case-folded for comparing."""
    local, domain = split_address(address)
    if local.casefold().startswith(MARKER):
        local = local[len(MARKER) :]
    return f"{local}@{domain}".casefold()


def buyer_id(address: str) -> str:
    """One buyer however written: unmarked, sub-address cut, case-folded (what the register keys on)."""
    local, domain = unmarked(address).rsplit("@", 1)
    return f"{local.split('+', 1)[0]}@{domain}"


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    spelling: Spelling
    kind: str
    co_recipient: bool
    order: str = ""
    subject: str = ""
    repeat_of: int | None = None
    """For ``repeat``: the index (in its batch) of the request for the same order, sent in phase 1."""
    control: bool = False

    @property
    def sender(self) -> str:
        return SHOP_SENDER if self.kind == "shop" else REVIEW_SENDER

    @property
    def tagged(self) -> bool:
        return self.kind in TAGGED

    @property
    def phase(self) -> int:
        return 1 if self.kind == "repeat" else 0


@dataclass(frozen=True)
class Plan:
    """A drawn case before its subject and order id are assigned."""

    spelling: Spelling
    kind: str
    co_recipient: bool
    repeat_of: int | None = None


def build_plans(ch: Chooser, ctx: Context, size: int) -> list[Plan]:
    """``size`` cases plus about one second request per eight (for an earlier granted buyer)."""
    plans: list[Plan] = []
    for _ in range(size):
        kind = ch.choice(KINDS)
        if kind == "opted-out":
            mailbox = ch.choice(OPTED_OUT)
        elif ch.chance(25):
            mailbox = ch.choice(POOL)
        else:
            mailbox = build_mailbox(ch, ctx)
        plans.append(Plan(build_spelling(ch, ctx, mailbox), kind, co_recipient=ch.chance(60)))
    reviews = [i for i, p in enumerate(plans) if p.kind == "review" and p.spelling.mailbox.buyer]
    for _ in range(min(len(reviews), max(1, size // 8))):
        first = ch.choice(reviews)
        again = build_spelling(ch, ctx, plans[first].spelling.mailbox)
        plans.append(Plan(again, "repeat", co_recipient=ch.chance(50), repeat_of=first))
    return plans


def plan_batches(ctx: Context, size: int) -> st.SearchStrategy[list[Plan]]:
    """Hypothesis: one batch of plans."""
    return st.composite(lambda draw: build_plans(DrawChooser(draw), ctx, size))()


def hypothesis_plans(ctx: Context, total: int, batch: int = 50) -> list[Plan]:
    """``total`` first-phase cases (plus their repeats) from derandomised hypothesis draws.

    Hypothesis drives the generation (so its draws, shrinkable and reproducible, define the cases); the
    MTA runs happen after, in batches, because one example per MTA transaction would cost a queue drain each.
    Its first example is the all-simplest one; duplicate spellings are dropped.
    """
    drawn: list[list[Plan]] = []

    @settings(max_examples=total // batch + 3, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(plan_batches(ctx, batch))
    def collect(plans: list[Plan]) -> None:
        drawn.append(plans)

    collect()
    return _merge(drawn, total)


def seeded_plans(ctx: Context, total: int, seed: int, batch: int = 50) -> list[Plan]:
    """The same from a seed (``make soak``), no hypothesis."""
    chooser = RandomChooser(random.Random(seed))
    return _merge([build_plans(chooser, ctx, batch) for _ in range(total // batch + 1)], total)


def _merge(drawn: list[list[Plan]], total: int) -> list[Plan]:
    """Concatenate batches (re-indexing repeats), drop repeated spellings, keep ``total`` first cases."""
    out: list[Plan] = []
    seen: set[tuple[str, str]] = set()
    firsts = 0
    for plans in drawn:
        where: dict[int, int] = {}
        for i, p in enumerate(plans):
            if p.repeat_of is not None:
                if p.repeat_of in where and (p.spelling.text, "repeat") not in seen:
                    seen.add((p.spelling.text, "repeat"))
                    out.append(Plan(p.spelling, p.kind, p.co_recipient, where[p.repeat_of]))
                continue
            if firsts >= total or (p.spelling.text, p.kind) in seen:
                continue
            seen.add((p.spelling.text, p.kind))
            where[i] = len(out)
            out.append(p)
            firsts += 1
    return out


def concat(*groups: Sequence[Plan]) -> list[Plan]:
    """Plans of several groups in one list, each repeat still pointing at its own first request."""
    out: list[Plan] = []
    for group in groups:
        base = len(out)
        out += [p if p.repeat_of is None else Plan(p.spelling, p.kind, p.co_recipient, p.repeat_of + base)
                for p in group]  # fmt: skip
    return out


CASES = int(os.environ.get("ORACLE_CASES", "150"))
"""Generated first requests per path: 150 in ``make test`` (about 180 cases with the fixed ones and the
repeats), 5000 in ``make soak``."""
SEED = os.environ.get("ORACLE_SEED")
"""Unset: derandomised hypothesis draws; set: the seeded generator (long runs)."""


def planned(ctx: Context, fixed: Sequence[Plan]) -> list[Plan]:
    """What one run sends: the controls, ``fixed`` (the issue's examples), then the generated cases."""
    generated = seeded_plans(ctx, CASES, int(SEED)) if SEED else hypothesis_plans(ctx, CASES)
    return concat(controls(), fixed, generated)


def run_label(target: str) -> str:
    return target + (f" seed {SEED}" if SEED else "")


def controls() -> list[Plan]:
    """Plainly spelt review requests that must arrive exactly once (pool buyers, relay and marked)."""
    return [Plan(plain(POOL[0]), "review", True), Plan(plain(POOL[1]), "review", False)]


def fixed_plans(specimens: Sequence[tuple[str, Mailbox, str, str]]) -> list[Plan]:
    """Hand-written spellings (the issue's examples): (text, mailbox, kind, form)."""
    return [Plan(Spelling(text, mailbox, (form,)), kind, True) for text, mailbox, kind, form in specimens]


def assign(plans: Sequence[Plan], path: str, run: str) -> list[Case]:
    """Subjects and order ids: unique per case, the same order for a repeat as for its first request."""
    cases: list[Case] = []
    prefix = {"smtp": 301, "sendmail": 302, "sendmail-t": 303}.get(path, 304)
    for i, p in enumerate(plans):
        order = cases[p.repeat_of].order if p.repeat_of is not None else f"{prefix}-{int(run, 16) % 10**7:07d}-{i:07d}"
        subject = f"oracle {path} {run} #{i} order {order}"
        control = p.spelling.plain and p.kind == "review" and p.spelling.mailbox in POOL[:2]
        cases.append(Case(p.spelling, p.kind, p.co_recipient, order, subject, p.repeat_of, control))
    return cases


def message_for(case: Case, path: str, co: str) -> bytes:
    to = case.spelling.text if path == "sendmail-t" else case.spelling.mailbox.address
    headers = [
        ("From", f"<{case.sender}>"),
        ("To", f"<{to}>" if to.startswith("@") else to),
        ("Subject", case.subject),
        ("Date", email.utils.formatdate()),
        ("Message-ID", f"<{uuid.uuid4().hex}@oracle.test>"),
    ]
    if path == "sendmail-t" and case.co_recipient:
        headers.append(("Bcc", co))
    if case.tagged:
        headers.append((TAG_HEADER, f"review {REVIEW_TOKEN}"))
    elif case.kind == "bad-token":
        headers.append((TAG_HEADER, "review not-the-secret-0000"))
    body = f"Hello,\r\nabout your order {case.order}.\r\n"
    return ("".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n" + body).encode()


# --------------------------------------------------------------------------- observations


@dataclass
class Submitted:
    """What the submitting client was told (SMTP replies; sendmail(1)'s exit status)."""

    rcpt: tuple[int, str] | None = None
    co: tuple[int, str] | None = None
    data: tuple[int, str] | None = None
    exit: tuple[int, str] | None = None

    def refused(self, co: bool) -> bool:
        """The client was told with a 5xx that this recipient (the co-recipient or the spelling) was refused."""
        reply = self.co if co else self.rcpt
        return (self.data is not None and self.data[0] >= 500) or (reply is not None and reply[0] >= 500)

    def text(self) -> str:
        told = (("rcpt", self.rcpt), ("co", self.co), ("data", self.data), ("exit", self.exit))
        return "; ".join(f"{n} {r[0]} {r[1][:100]}" for n, r in told if r is not None) or "no reply"


@dataclass
class Delivery:
    rcpt: str
    orcpt: str


@dataclass
class Observed:
    """Everything one MTA did with one case."""

    submitted: Submitted = field(default_factory=Submitted)
    delivered: list[Delivery] = field(default_factory=list)
    bounced: list[tuple[str, str]] = field(default_factory=list)
    """(Final-Recipient, Original-Recipient) of every recipient block of every DSN about the case."""

    def bounce_names(self, *addresses: str) -> bool:
        wanted = {a.casefold() for a in addresses if a}
        return any(_dsn_address(f) in wanted or _dsn_address(o) in wanted for f, o in self.bounced)

    def what(self) -> str:
        to = ", ".join(f"<{d.rcpt}>" + (f" (orcpt {d.orcpt})" if d.orcpt else "") for d in self.delivered)
        bounced = ", ".join(f"<{_dsn_address(f)}>" for f, _o in self.bounced)
        return f"delivered to {to or 'nobody'}; told: {self.submitted.text()}; bounced: {bounced or 'none'}"


def _dsn_address(field_value: str) -> str:
    """``rfc822; a@b`` (DSN field) and ``rfc822;a@b`` (ORCPT) -> ``a@b``, case-folded."""
    value = field_value.strip()
    if value.lower().startswith("rfc822;"):
        value = value[7:]
    return value.strip().casefold()


@dataclass
class Collected:
    """One batch as read back from an MTA: per case what it did, and every file that left (secret check)."""

    seen: dict[int, Observed] = field(default_factory=dict)
    files: list[tuple[int | None, str, bytes]] = field(default_factory=list)

    def case(self, index: int) -> Observed:
        return self.seen.setdefault(index, Observed())


def _subject_key(value: object) -> str:
    return " ".join(str(value or "").split())


def _read_bounce(msg: email.message.Message,
                 subjects: dict[str, int]) -> tuple[int | None, list[tuple[str, str]]] | None:  # fmt: skip
    """(case, recipient blocks) when ``msg`` is a DSN; the case from the returned message's subject."""
    if msg.get_content_type() != "multipart/report":
        return None
    report = parse_bounce(msg)
    subject = _subject_key(report.returned.get("Subject")) if report.returned is not None else ""
    blocks = [(r.get("Final-Recipient", ""), r.get("Original-Recipient", "")) for r in report.recipients]
    return subjects.get(subject), blocks


def read_sink(sink: Sink, subjects: dict[str, int], into: Collected) -> None:
    """Deliveries (by subject, with each RCPT's ORCPT) and DSNs (by returned subject) the sink received."""
    for m in sink.messages():
        bounce = _read_bounce(m.message, subjects)
        index = bounce[0] if bounce is not None else subjects.get(_subject_key(m.message.get("Subject")))
        into.files.append((index, f"sink file for {m.rcpts}", m.raw))
        if index is None:
            continue
        if bounce is not None:
            into.case(index).bounced.extend(bounce[1])
            continue
        for args in m.rcpt_args:
            parts = args.split()
            orcpt = next((p[6:] for p in parts[1:] if p.upper().startswith("ORCPT=")), "")
            into.case(index).delivered.append(Delivery(parts[0][1:-1], orcpt))
    sink.clear()


class Target:
    """An MTA to send cases through and read back from."""

    name = ""
    co_recipient = ""

    def submit(self, path: str, cases: Sequence[tuple[int, Case]]) -> dict[int, Submitted]:
        raise NotImplementedError

    def drain(self, timeout: float) -> list[str]:
        """Wait for the queue to empty; return (and remove) what is stuck."""
        raise NotImplementedError

    def collect(self, subjects: dict[str, int]) -> Collected:
        raise NotImplementedError


def smtp_batch(port: int, cases: Sequence[tuple[int, Case]], co: str, path: str) -> dict[int, Submitted]:
    """Cases as transactions over few SMTP sessions, every reply recorded; the spelling is sent verbatim."""
    out: dict[int, Submitted] = {}
    for start in range(0, len(cases), SESSION_CASES):
        client = smtplib.SMTP("127.0.0.1", port, timeout=120)
        try:
            client.ehlo("client.test")
            for index, case in cases[start : start + SESSION_CASES]:
                got = out[index] = Submitted()
                client.docmd("MAIL", f"FROM:<{case.sender}>")
                got.rcpt = _decoded(client.docmd("RCPT", f"TO:<{case.spelling.text}>"))
                if case.co_recipient:
                    got.co = _decoded(client.docmd("RCPT", f"TO:<{co}>"))
                if any(r is not None and r[0] < 300 for r in (got.rcpt, got.co)):
                    try:
                        got.data = _decoded(client.data(message_for(case, path, co)))
                    except smtplib.SMTPDataError as exc:
                        got.data = _decoded((exc.smtp_code, exc.smtp_error))
                else:
                    client.rset()
        finally:
            with contextlib.suppress(Exception):
                client.quit()
    return out


def _decoded(reply: tuple[int, bytes | str]) -> tuple[int, str]:
    code, text = reply
    return code, text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def wait_settled(entries: Callable[[], list[object]], timeout: float, kick: Callable[[], None] | None = None,
                 stall: float = 8.0) -> list[object]:  # fmt: skip
    """Poll until the queue is empty; give up when it has not changed for ``stall`` seconds (after one
    kick), e.g. mail a milter keeps deferring or that waits in the maildrop, or at ``timeout``."""
    deadline = time.monotonic() + timeout
    last = ""
    changed = time.monotonic()
    kicked = kick is None
    while True:
        now = entries()
        if not now:
            return []
        state = json.dumps(now, sort_keys=True, default=str)
        if state != last:
            last, changed = state, time.monotonic()
        elif time.monotonic() - changed > stall:
            if kicked:
                return now
            assert kick is not None
            kick()
            kicked, changed = True, time.monotonic()
        if time.monotonic() > deadline:
            return now
        time.sleep(0.2)


class PostfixTarget(Target):
    """A harness Postfix: relayed mail in its sink, local copies and bounces in the maildirs."""

    co_recipient = "owner@shop.test"

    def __init__(self, name: str, postfix: PostfixInstance) -> None:
        self.name = name
        self.postfix = postfix

    def submit(self, path: str, cases: Sequence[tuple[int, Case]]) -> dict[int, Submitted]:
        if path == "smtp":
            return smtp_batch(self.postfix.smtp_port, cases, self.co_recipient, path)
        out: dict[int, Submitted] = {}
        for index, case in cases:
            message = message_for(case, path, self.co_recipient)
            if path == "sendmail":
                rcpts = [case.spelling.text, *([self.co_recipient] if case.co_recipient else [])]
                done = self.postfix.sendmail(case.sender, rcpts, message)
            else:
                done = self.postfix.sendmail(case.sender, [], message, extra_args=("-t", "-i"))
            out[index] = Submitted(exit=(done.returncode, (done.stderr or done.stdout).strip()))
        return out

    def drain(self, timeout: float) -> list[str]:
        left = wait_settled(self.postfix.queue_entries, timeout, kick=self.postfix.flush)  # type: ignore[arg-type]
        if left:
            self.postfix.clear_queue()
        return [f"{e['queue_name']} {e['queue_id']} from=<{e['sender']}> to="  # type: ignore[index]
                + ",".join(f"<{r['address']}>" for r in e["recipients"])  # type: ignore[index]
                for e in left]  # fmt: skip

    def collect(self, subjects: dict[str, int]) -> Collected:
        into = Collected()
        read_sink(self.postfix.sink, subjects, into)
        for user in LOCAL_USERS:
            for p in self.postfix.mailbox_paths(user):
                raw = p.read_bytes()
                msg = email.message_from_bytes(raw)
                bounce = _read_bounce(msg, subjects)
                index = bounce[0] if bounce is not None else subjects.get(_subject_key(msg.get("Subject")))
                into.files.append((index, f"mailbox of {user}", raw))
                if index is None:
                    continue
                if bounce is not None:
                    into.case(index).bounced.extend(bounce[1])
                else:
                    into.case(index).delivered.append(Delivery(f"{user}@shop.test", ""))
        self.postfix.clear_mailboxes()
        return into


# --------------------------------------------------------------------------- judging


@dataclass(frozen=True)
class Violation:
    rule: str
    path: str
    case: Case
    detail: str

    def line(self) -> str:
        c = self.case
        return (f"[{self.rule}] {self.path} kind={c.kind}{' +co' if c.co_recipient else ''} "
                f"spelling={c.spelling.text!r} ({'+'.join(c.spelling.forms) or 'plain'}; built around "
                f"{c.spelling.mailbox.address}) order={c.order}: {self.detail}")  # fmt: skip


SUMMARIES: list[str] = []
"""One line per run, printed at the end of the pytest session (tests/e2e/conftest.py)."""


@dataclass
class Report:
    target: str
    cases: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    over_refused: Counter[str] = field(default_factory=Counter)
    refusals: list[Violation] = field(default_factory=list)
    """The over-refused cases themselves (allowed, listed for reading)."""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.violations or self.stuck)

    def summary(self) -> str:
        per_path = ", ".join(f"{p} {n}" for p, n in self.cases.items())
        rules = Counter(v.rule for v in self.violations)
        found = ", ".join(f"{r} {n}" for r, n in sorted(rules.items())) or "none"
        over = ", ".join(f"{k} {n}" for k, n in sorted(self.over_refused.items())) or "none"
        return (f"oracle {self.target}: cases {per_path}; violations: {found}; stuck {len(self.stuck)}; "
                f"refused but allowed to be (fail closed): {over}; {self.seconds:.0f} s")  # fmt: skip

    def details(self, limit: int = 80) -> str:
        lines = [self.summary(), *(v.line() for v in self.violations[:limit])]
        if len(self.violations) > limit:
            lines.append(f"... and {len(self.violations) - limit} more")
        lines += [f"[stuck] {s}" for s in self.stuck[:20]]
        lines += [f"(allowed) {v.line()}" for v in self.refusals[:limit]]
        return "\n".join(lines)

    def publish(self) -> None:
        """The summary line for the end of the run; with ORACLE_REPORT=FILE also every detail, pass or fail."""
        SUMMARIES.append(self.summary())
        if os.environ.get("ORACLE_REPORT"):
            with open(os.environ["ORACLE_REPORT"], "a", encoding="utf-8") as out:
                out.write(self.details(limit=100000) + "\n")


def unseen_marked_copy(path: str, case: Case, wrong: list[str], expected: set[str], got: list[str]) -> bool:
    """The one documented limit of the sendmail(1) path (docs/recipients.md): cleanup rewrites a recipient
    before the milter sees it and a delete must name the text given to sendmail(1), so a marked buyer
    written with a source route keeps its marked copy beside the unmarked one the review channel adds. Only
    that exact shape is excused: the sendmail paths, a source route in the spelling, and every wrong copy
    being the marked form of the very mailbox that also got its unmarked copy."""
    text = case.spelling.text.strip().lstrip("<")
    if path not in ("sendmail", "sendmail-t") or not (text.startswith("@") and ":" in text):
        return False
    unmarked_copy = any(canonical(rcpt) in expected and not is_marked(rcpt) for rcpt in got)
    return unmarked_copy and all(is_marked(rcpt) and unmarked(rcpt) in expected for rcpt in wrong)


def judge(path: str, case: Case, co: str, oracle: Observed, subject: Observed, opted_out: frozenset[str],
          order_delivered: bool, report: Report) -> list[Delivery]:  # fmt: skip
    """Check one case against the rules in the module docstring; returns the buyer deliveries.

    A tagged request is granted to the buyer *Postfix routes it to* (the mailbox it was built around is
    only a label): unless that buyer opted out or the order already reached a buyer (``order_delivered``).
    """

    def add(rule: str, detail: str) -> None:
        report.violations.append(Violation(rule, path, case, f"{detail}; MTA alone: {oracle.what()} "
                                           f"| with amzguard: {subject.what()}"))  # fmt: skip

    oracle_buyers = [d for d in oracle.delivered if is_buyer(d.rcpt)]
    expected = {unmarked(d.rcpt) for d in oracle_buyers}
    buyer_got = [d for d in subject.delivered if is_buyer(d.rcpt) or canonical(d.rcpt) in expected]
    others_got = {canonical(d.rcpt) for d in subject.delivered if d not in buyer_got}
    if buyer_got and not case.tagged:
        add("leak", "a buyer got it, and no channel granted it")
    elif any(buyer_id(d.rcpt) in opted_out for d in buyer_got):
        add("opt-out", "an opted-out buyer got a review request")
    elif buyer_got and order_delivered:
        add("one-per-order", "a second request for the order reached a buyer")
    elif buyer_got:
        wrong = [d.rcpt for d in buyer_got if canonical(d.rcpt) not in expected or is_marked(d.rcpt)]
        if wrong and unseen_marked_copy(path, case, wrong, expected, got=[d.rcpt for d in buyer_got]):
            report.over_refused["marked copy kept (sendmail(1) spelling unseen)"] += 1
            report.refusals.append(Violation("marked-copy-kept", path, case, f"{wrong}; with amzguard: "
                                             f"{subject.what()}"))  # fmt: skip
        elif wrong:
            add("wrong-mailbox", f"{len(buyer_got)} buyer copies, {wrong} not at the routed unmarked mailbox "
                                 f"{sorted(expected)}")  # fmt: skip
        elif len(buyer_got) > max(1, len(oracle_buyers)):
            add("duplicate", f"{len(buyer_got)} copies")
    # A DSN the MTA alone sends too (sendmail(1) splits bla"ck"x@y into several addresses and bounces the
    # unknown local ones) says nothing about amzguard; only a new one naming a buyer or a stand-in counts.
    oracle_bounced = {_dsn_address(f) for f, _o in oracle.bounced}
    about_buyer = [f for f, o in subject.bounced if _dsn_address(f) not in oracle_bounced and (
        is_buyer(_dsn_address(f)) or is_buyer(_dsn_address(o)) or _dsn_address(f).endswith(".invalid"))]  # fmt: skip
    if buyer_got and (about_buyer or subject.submitted.refused(co=False)):
        add("false-bounce", "the sender was told the buyer was refused, and the buyer got it")
    spelling_bounced = any(_dsn_address(f) != co for f, _o in subject.bounced)
    for d in oracle.delivered:
        if is_buyer(d.rcpt) or canonical(d.rcpt) in others_got:
            continue
        is_co = d.rcpt.casefold() == co
        if subject.submitted.refused(co=is_co) or subject.bounce_names(d.rcpt) or (spelling_bounced and not is_co):
            if not is_co:
                report.over_refused["non-buyer routed mailbox refused"] += 1
                report.refusals.append(Violation("refused-non-buyer", path, case, f"<{d.rcpt}>; with amzguard: "
                                                 f"{subject.what()}"))  # fmt: skip
            continue
        add("lost-copy", f"<{d.rcpt}> ({'co-recipient' if is_co else 'where the MTA routes the spelling'}) "
                         "got nothing and nobody was told")  # fmt: skip
    if case.control and len([d for d in buyer_got if canonical(d.rcpt) in expected]) != 1:
        add("control", f"a plain review request must arrive exactly once at {sorted(expected)}")
    may_get = case.tagged and not order_delivered and not any(buyer_id(d.rcpt) in opted_out for d in oracle_buyers)
    if may_get and oracle_buyers and not buyer_got:
        report.over_refused["granted review request refused"] += 1
        report.refusals.append(Violation("refused-granted", path, case, f"MTA alone: {oracle.what()} | with "
                                         f"amzguard: {subject.what()}"))  # fmt: skip
    return buyer_got


def is_marked(address: str) -> bool:
    return split_address(address)[0].casefold().startswith(MARKER)


# --------------------------------------------------------------------------- running


def run_path(oracle: Target, subject: Target, path: str, plans: Sequence[Plan], report: Report,
             opted_out: frozenset[str], batch: int = 250, drain_timeout: float = 180) -> None:  # fmt: skip
    """Send ``plans`` through both MTAs on ``path``, ``batch`` first requests (plus their repeats) at a
    time, and judge every case into ``report``."""
    started = time.monotonic()
    firsts = [i for i, p in enumerate(plans) if p.repeat_of is None]
    for start in range(0, len(firsts), batch):
        chosen = firsts[start : start + batch]
        renumber = {old: new for new, old in enumerate(chosen)}
        local = [plans[i] for i in chosen]
        local += [Plan(p.spelling, p.kind, p.co_recipient, renumber[p.repeat_of])
                  for p in plans if p.repeat_of in renumber]  # fmt: skip
        cases = assign(local, path, uuid.uuid4().hex[:8])
        _run_batch(oracle, subject, path, cases, report, opted_out, drain_timeout)
        report.cases[path] += len(cases)
    report.seconds += time.monotonic() - started


def assert_no_leak(label: str, oracle: Target, subject: Target, path: str, plans: Sequence[Plan],
                   milters: Sequence[object]) -> None:  # fmt: skip
    """The oracle test's one check, for either MTA: run ``plans`` on ``path`` through both targets, publish
    the report (docs/testing-oracle.md), and fail on a dead milter or any violation."""
    report = Report(run_label(label))
    run_path(oracle, subject, path, plans, report, opted_out_ids())
    report.publish()
    for milter in milters:
        assert milter.alive(), milter.log_text()[-3000:]  # type: ignore[attr-defined]
    assert not report.failed, report.details()


def _run_batch(oracle: Target, subject: Target, path: str, cases: list[Case], report: Report,
               opted_out: frozenset[str], drain_timeout: float) -> None:  # fmt: skip
    subjects = {c.subject: i for i, c in enumerate(cases)}
    told: dict[str, dict[int, Submitted]] = {oracle.name: {}, subject.name: {}}
    for phase in (0, 1):
        todo = [(i, c) for i, c in enumerate(cases) if c.phase == phase]
        for target in (oracle, subject) if todo else ():
            told[target.name].update(target.submit(path, todo))
        for target in (oracle, subject) if todo else ():
            stuck = target.drain(drain_timeout)
            if target is subject:
                report.stuck.extend(f"{path}: {s}" for s in stuck)
    by_oracle, by_subject = oracle.collect(subjects), subject.collect(subjects)
    for target, got in ((oracle, by_oracle), (subject, by_subject)):
        for i, sub in told[target.name].items():
            got.case(i).submitted = sub
    orders: set[str] = set()
    for phase in (0, 1):
        for i, case in enumerate(cases):
            if case.phase != phase:
                continue
            got = judge(path, case, subject.co_recipient, by_oracle.case(i), by_subject.case(i), opted_out,
                        case.order in orders, report)  # fmt: skip
            if got and case.tagged:
                orders.add(case.order)
    for index, where, raw in by_subject.files:
        if REVIEW_TOKEN.encode() in raw:
            owner = cases[index] if index is not None else cases[0]
            note = "" if index is not None else " (a file no case owns; the case shown is the batch's first)"
            report.violations.append(Violation("secret", path, owner, f"the review secret left in the {where}{note}"))


def opted_out_ids() -> frozenset[str]:
    return frozenset(buyer_id(m.address) for m in OPTED_OUT)


def register_opt_outs(config: Path) -> None:
    """Fill the enforcing milter's opt-out register with the real CLI, as an admin would."""
    done = subprocess.run([sys.executable, "-m", "amzguard", "optout", "add", "-c", str(config),
                           *(m.address for m in OPTED_OUT)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr


class SendmailTarget(Target):
    """The private Sendmail of sendmail_harness.py: everything it relays or bounces ends in its sink (the
    shop's domain is not local there, so DSNs to the shop's senders are relayed too)."""

    co_recipient = "partner@example.org"

    def __init__(self, name: str, sendmail: SendmailInstance, sink: Sink) -> None:
        self.name = name
        self.sendmail = sendmail
        self.sink = sink

    def submit(self, path: str, cases: Sequence[tuple[int, Case]]) -> dict[int, Submitted]:
        assert path == "smtp", "every submission reaches Sendmail's milter over SMTP"
        return smtp_batch(self.sendmail.port, cases, self.co_recipient, path)

    def drain(self, timeout: float) -> list[str]:
        left = wait_settled(self.sendmail.queue, timeout)  # type: ignore[arg-type]
        queue = self.sendmail.workdir / "queue"
        stuck = []
        for name in left:
            qf = queue / str(name)
            with contextlib.suppress(OSError):
                head = [ln for ln in qf.read_text(errors="replace").splitlines() if ln.startswith(("R", "H??Subject"))]
                stuck.append(f"{name}: {' | '.join(head)[:300]}")
        for p in queue.iterdir():
            with contextlib.suppress(OSError):
                p.unlink()
        return stuck

    def collect(self, subjects: dict[str, int]) -> Collected:
        into = Collected()
        read_sink(self.sink, subjects, into)
        return into
