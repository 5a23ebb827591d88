"""``amzguard explain``: what the configuration would do with a message to these addresses, and why.

An admin asking "why was this refused?" or "will the review mail get through?" should get the answer of
the milter itself, not of a second implementation: this drives the same ``transaction.Transaction`` as
the adapter (recipients, header fields, body, the store's answers, the judgement), on facts given on the
command line (or, for ``amzguard lint``, read from a file) instead of read from the MTA. The store is only read, and only if it exists: explaining a
message must not create a database or record a review request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .address import Recipient, parse_address
from .config import Config
from .content import CHUNK, ContentAction, HeaderField, needs_any_body
from .decision_log import bracketed
from .store import Store, StoreError, open_store
from .transaction import Judgement, Transaction
from .policy import (
    AddRecipient,
    Channel,
    Decision,
    ChangeHeader,
    DeleteHeader,
    DeleteRecipient,
    MessageFacts,
    MessagePlan,
    Mode,
    NO_ORIGIN,
    Origin,
    Outcome,
    Policy,
    ProactiveSent,
    Reason,
    SubmissionPath,
)


class HeaderSyntaxError(ValueError):
    """A ``--header`` argument that is not ``Name: value``."""


def parse_header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    name = name.strip()
    if not colon or not name or any(ch.isspace() for ch in name):
        raise HeaderSyntaxError(f"expected 'Name: value', got {text!r}")
    return name, value.strip()


@dataclass(frozen=True, slots=True)
class RecipientVerdict:
    recipient: Recipient
    decision: Decision
    stage: str
    """``rcpt`` (certain at RCPT TO, refused there on the SMTP path) or ``eom`` (end of message)."""


@dataclass(frozen=True, slots=True)
class OfflineJudgement:
    """The transaction's judgement of a message given on the command line or in a file."""

    verdicts: list[RecipientVerdict]
    judgement: Judgement
    store_note: str | None = None
    """Why the store's answers are missing, when the policy had questions for it."""
    counts_today: dict[str, int] | None = None
    """Today's (UTC) proactive counts per marketplace, read when the message would be counted for the daily
    limit (None: nothing to count, or no store to read)."""

    @property
    def plan(self) -> MessagePlan | None:
        """None when nothing reaches end of message (every recipient refused at RCPT)."""
        return self.judgement.plan

    @property
    def facts(self) -> MessageFacts:
        return self.judgement.facts


def judge(
    policy: Policy,
    sender: str,
    path: SubmissionPath,
    headers: Sequence[tuple[str, str] | HeaderField],
    addresses: Sequence[str],
    store: Store | None = None,
    body: bytes | None = None,
    origin: Origin = NO_ORIGIN,
) -> OfflineJudgement:
    """The milter's judgement on given facts: the same ``Transaction`` the adapter drives, fed the
    envelope, the header fields (with their lines when they come from a file) and, if given, the body in
    the MTA's chunk size. ``store``: an existing store, only read (never created, nothing recorded).
    The milter judges what Postfix resolved (``{rcpt_addr}``) on the SMTP path; offline there is no
    Postfix to ask, so recipients are judged as the milter does without that macro (see ROUTING_NOTE).
    ``origin``: the SASL login and client the milter would read from the MTA (``--sasl-login``,
    ``--client``)."""
    trx = Transaction(policy, path, parse_address(sender), origin=origin)
    for raw in addresses:
        trx.rcpt(raw)
    for field in headers:
        if isinstance(field, HeaderField):
            trx.header(field.name, field.value, field.line or None)
        else:
            trx.header(*field)
    if body is not None and trx.wants_body():
        for start in range(0, len(body), CHUNK):
            if not trx.body(body[start : start + CHUNK]):
                break
    questions = trx.questions()
    answered = None
    store_note = None
    if questions and store is None:
        store_note = "the store does not exist yet, so no opt-out or earlier review request was consulted"
    elif questions and store is not None:
        try:
            answered = store.answer(questions, trx.facts())
        except StoreError as exc:
            store_note = f"the store could not be read ({exc}); the milter would apply store.on_error"
    judgement = trx.judge(answered)
    verdicts = [RecipientVerdict(d.recipient, d, "rcpt") for d in judgement.rcpt_decisions]
    verdicts += [RecipientVerdict(d.recipient, d, "eom") for d in judgement.decisions]
    counts_today = None
    if store is not None and any(isinstance(r, ProactiveSent) for r in judgement.records):
        try:
            counts_today = {row.marketplace: row.count for row in store.daily_counts(store.today())}
        except StoreError:
            counts_today = None  # the store_note above, or the same failure, says why nothing was consulted
    return OfflineJudgement(verdicts, judgement, store_note, counts_today)


def limit_lines(judgement: OfflineJudgement) -> list[str]:
    """What the daily limit would do with the message, at today's count (the milter decides it atomically
    when it records the message: another message may take the last place first)."""
    lines = []
    for record in judgement.judgement.records:
        if not isinstance(record, ProactiveSent) or record.limit is None:
            continue
        if judgement.counts_today is None:
            lines.append(f"daily limit: {record.marketplace} {record.limit} a day; today's count not read (no store)")
            continue
        sent = judgement.counts_today.get(record.marketplace, 0)
        fits = sent + record.count <= record.limit
        verdict = "fits" if fits else "the milter would hold the message (451 4.7.1) until a later UTC day"
        lines.append(f"daily limit: {record.marketplace} {sent} of {record.limit} sent today (UTC), this message "
                     f"adds {record.count}: {verdict}")
    return lines


def _classification(recipient: Recipient) -> str:
    kinds = []
    if recipient.relay:
        kinds.append(f"Amazon relay domain ({recipient.address.domain})")
    if recipient.marked:
        kinds.append("marked local part")
    return "buyer: " + " and ".join(kinds) if kinds else "not a buyer address"


def _why(policy: Policy, verdict: RecipientVerdict, facts: MessageFacts) -> str:
    decision = verdict.decision
    open_channels = [rule.channel.value for rule in policy.rules if rule.possible(facts.sender, facts.origin)]
    match decision.reason:
        case Reason.NOT_BUYER:
            return "amzguard lets it pass unchanged"
        case Reason.CHANNEL if decision.outcome is Outcome.DELIVER_UNMARKED:
            return f"granted by the {decision.channel.value} channel{recognised_text(decision)}; delivered to <{decision.recipient.unmarked}>"
        case Reason.CHANNEL:
            return f"granted by the {decision.channel.value} channel{recognised_text(decision)}"
        case Reason.OPTED_OUT | Reason.DUPLICATE_REVIEW | Reason.NO_ORDER_ID:
            order = f" (order {facts.order_id})" if facts.order_id else ""
            return f"a {decision.channel.value} request{order} refused: {decision.reason.value}"
        case Reason.CONTENT:
            refusing = [f.text() for f in decision.findings if f.action is ContentAction.REFUSE]
            return f"granted by the {decision.channel.value} channel, but refused for its content: {'; '.join(refusing)}"
        case Reason.UNRESOLVED_ROUTE:
            return "a routing form whose destination is not certain; refused whatever channel (see the note below)"
        case Reason.SENDER_NOT_APPROVED if verdict.stage == "rcpt":
            return (f"envelope sender {bracketed(facts.sender)} is not in buyers.approved_senders for this marketplace, "
                    "so this is certain before the headers (Seller Central: Messaging Permissions)")
        case Reason.SENDER_NOT_APPROVED:
            mailboxes = "; ".join(facts.header_values("from")) or "none"
            return (f"envelope sender {bracketed(facts.sender)} or From: ({mailboxes}) is not in "
                    "buyers.approved_senders for this marketplace (Seller Central: Messaging Permissions)")
        case Reason.MESSAGING_RESTRICTED:
            return (f"a {decision.channel.value} message refused: Amazon restricted this account from proactive "
                    "messages to this marketplace (amzguard restriction list); replies still pass")
        case Reason.MARKER_ONLY:
            return f"granted by the {decision.channel.value} channel, but nothing is left once the marker is removed"
        case _ if verdict.stage == "rcpt":
            return f"no channel is open to mail from {bracketed(facts.sender)}, so this is certain before the headers"
        case _:
            bad = [channel.value for channel in policy.bad_token_channels(facts)]
            notes = [f"open to this sender: {', '.join(open_channels) or 'none'}"]
            if bad:
                notes.append(f"tag with a wrong secret: {', '.join(bad)}")
            elif not facts.headers:
                notes.append("no channel tag among the headers")
            return f"no channel grants this message ({'; '.join(notes)})"


def recognised_text(decision: Decision) -> str:
    """`` (recognised by sender+subject)``: which way the review channel recognised the message."""
    if not decision.recognised_by:
        return ""
    return f" (recognised by {'+'.join(by.value for by in decision.recognised_by)})"


def plan_lines(plan: MessagePlan | None, mode: Mode) -> list[str]:
    if mode is Mode.MONITOR:
        return ["message: mode is monitor: the milter logs and counts the decisions above and changes nothing"]
    if plan is None:
        return ["message: every recipient is refused at RCPT TO; nothing is accepted"]
    if plan.reject is not None:
        lines = [f"message: refused whole: {plan.reject.code} {plan.reject.status} {plan.reject.text}"]
        if plan.changes:
            lines.append("  after deleting every tag field (a bounce of the message must not carry the secret)")
        return lines
    if not plan.changes:
        return ["message: accepted unchanged"]
    lines = ["message: accepted with these changes:"]
    for change in plan.changes:
        match change:
            case DeleteRecipient(address=address):
                lines.append(f"  delete recipient {address}")
            case AddRecipient(address=address, esmtp=esmtp):
                lines.append(f"  add recipient {address}" + (f" {' '.join(esmtp)}" if esmtp else ""))
            case DeleteHeader(name=name, index=index):
                lines.append(f"  delete header {name} (field {index})")
            case ChangeHeader(name=name, index=index, value=value):
                lines.append(f"  rewrite header {name} (field {index}) to: {' '.join(value.split())}")
    lines += [f"  keep header {field}: names the marked address, cannot be rewritten safely" for field in plan.kept_fields]
    return lines


ROUTING_NOTE = (
    "note: on the SMTP path the milter judges the address Postfix itself resolved ({rcpt_addr}); explain "
    "cannot ask Postfix, so, like the milter without that macro (sendmail(1) path), it refuses a buyer "
    "address in a routing form (%, !, @ in the local part) as unresolved-route"
)


def explain(
    config: Config,
    addresses: Sequence[str],
    sender: str,
    path: SubmissionPath,
    headers: Sequence[tuple[str, str]],
    origin: Origin = NO_ORIGIN,
) -> list[str]:
    """The lines ``amzguard explain`` prints."""
    policy = Policy.from_settings(config.policy)
    mode = config.policy.mode
    # A SQLite file is read only if it exists (explaining must not create one); a database is asked.
    store = open_store(config.store) if config.store.url or config.store.path.exists() else None
    try:
        judgement = judge(policy, sender, path, headers, addresses, store, origin=origin)
    finally:
        if store is not None:
            store.shutdown()
    verdicts, plan, facts = judgement.verdicts, judgement.plan, judgement.facts
    would = "would " if mode is Mode.MONITOR else ""
    lines = [f"sender {bracketed(facts.sender)}, path {path.value}, mode {mode.value}"]
    for verdict in verdicts:
        decision = verdict.decision
        where = "at RCPT TO" if verdict.stage == "rcpt" else "at end of message"
        why = _why(policy, verdict, facts)
        if judgement.store_note and verdict.stage == "eom" and verdict.recipient.is_buyer:
            why += f"; {judgement.store_note}"
        lines += [
            f"{bracketed(verdict.recipient.address)}: {would}{decision.outcome.value} {where}"
            f" (reason {decision.reason.value}, channel {decision.channel.value})",
            f"  {_classification(verdict.recipient)}; {why}",
        ]
    if any(verdict.recipient.unresolved for verdict in verdicts):
        lines.append(ROUTING_NOTE)
    lines += [f"content: {f.action.value} {f.text()}" for f in judgement.judgement.findings]
    lines += limit_lines(judgement)
    if not judgement.judgement.body_read and _body_rules_would_run(policy, judgement):
        lines.append("note: explain has no body: content rules that read it were not run (amzguard lint FILE.eml runs them)")
    return lines + plan_lines(plan, mode)


def _body_rules_would_run(policy: Policy, judgement: OfflineJudgement) -> bool:
    granted = any(v.decision.channel is not Channel.NONE and v.recipient.is_buyer for v in judgement.verdicts)
    return granted and needs_any_body(policy.settings.content)
