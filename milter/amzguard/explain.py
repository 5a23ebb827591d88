"""``amzguard explain``: what the configuration would do with a message to these addresses, and why.

An admin asking "why was this refused?" or "will the review mail get through?" should get the answer of
the milter itself, not of a second implementation: this runs the same policy calls in the same order as
the adapter (``Policy.decide_at_rcpt`` per recipient; at end of message ``Policy.read_order_id``, the
store's answers to ``Policy.store_questions``, then ``Policy.decide`` and ``Policy.plan``), on facts given on
the command line instead of read from the MTA. The store is only read, and only if it exists: explaining a
message must not create a database or record a review request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .address import Recipient, classify_recipient, parse_address
from .config import Config
from .decision_log import bracketed
from .store import Store, StoreError, open_store
from .policy import (
    AddRecipient,
    Decision,
    DeleteHeader,
    DeleteRecipient,
    MessageFacts,
    MessagePlan,
    Mode,
    Outcome,
    Policy,
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
class Judgement:
    verdicts: list[RecipientVerdict]
    plan: MessagePlan | None
    """None when nothing reaches end of message (every recipient refused at RCPT)."""
    facts: MessageFacts
    store_note: str | None = None
    """Why the store's answers are missing, when the policy had questions for it."""


def judge(
    policy: Policy,
    sender: str,
    path: SubmissionPath,
    headers: Sequence[tuple[str, str]],
    addresses: Sequence[str],
    store: Store | None = None,
) -> Judgement:
    """The adapter's sequence of policy calls, on given facts (no body: the order id comes from the
    subject). ``store``: an existing store to read, or None."""
    settings = policy.settings
    sender_address = parse_address(sender)
    wanted = policy.wanted_headers()
    kept = tuple((name, value) for name, value in headers if name.casefold() in wanted)
    header_counts: dict[str, int] = {}
    for name, _ in headers:
        header_counts[name.casefold()] = header_counts.get(name.casefold(), 0) + 1
    facts = MessageFacts(sender=sender_address, path=path, headers=kept)
    verdicts: list[RecipientVerdict] = []
    at_eom: list[Recipient] = []
    for raw in addresses:
        # The milter judges what Postfix resolved ({rcpt_addr}) on the SMTP path; explain cannot ask Postfix,
        # so it judges as the milter does without that macro (see ROUTING_NOTE).
        recipient = classify_recipient(raw, settings.buyers, smtp=path is SubmissionPath.SMTP)
        early = policy.decide_at_rcpt(sender_address, recipient, path)
        if early is not None:
            verdicts.append(RecipientVerdict(recipient, early, "rcpt"))
            if settings.mode is Mode.MONITOR:
                continue  # logged once at RCPT, stays in the envelope, not judged again (as the adapter)
        else:
            at_eom.append(recipient)
    facts = policy.read_order_id(facts)
    questions = policy.store_questions(facts, at_eom)
    store_note = None
    if questions and store is None:
        store_note = "the store does not exist yet, so no opt-out or earlier review request was consulted"
    elif questions and store is not None:
        try:
            facts = store.answer(questions, facts)
        except StoreError as exc:
            store_note = f"the store could not be read ({exc}); the milter would apply store.on_error"
    decisions = tuple(policy.decide(facts, recipient) for recipient in at_eom)
    verdicts.extend(RecipientVerdict(d.recipient, d, "eom") for d in decisions)
    passed_rcpt = at_eom or settings.mode is Mode.MONITOR
    plan = policy.plan(facts, decisions, header_counts) if passed_rcpt else None
    return Judgement(verdicts, plan, facts, store_note)


def _classification(recipient: Recipient) -> str:
    kinds = []
    if recipient.relay:
        kinds.append(f"Amazon relay domain ({recipient.address.domain})")
    if recipient.marked:
        kinds.append("marked local part")
    return "buyer: " + " and ".join(kinds) if kinds else "not a buyer address"


def _why(policy: Policy, verdict: RecipientVerdict, facts: MessageFacts) -> str:
    decision = verdict.decision
    open_channels = [rule.channel.value for rule in policy.rules if rule.possible(facts.sender)]
    match decision.reason:
        case Reason.NOT_BUYER:
            return "amzguard lets it pass unchanged"
        case Reason.CHANNEL if decision.outcome is Outcome.DELIVER_UNMARKED:
            return f"granted by the {decision.channel.value} channel; delivered to <{decision.recipient.unmarked}>"
        case Reason.CHANNEL:
            return f"granted by the {decision.channel.value} channel"
        case Reason.OPTED_OUT | Reason.DUPLICATE_REVIEW | Reason.NO_ORDER_ID:
            order = f" (order {facts.order_id})" if facts.order_id else ""
            return f"a {decision.channel.value} request{order} refused: {decision.reason.value}"
        case Reason.UNRESOLVED_ROUTE:
            return "a routing form whose destination is not certain; refused whatever channel (see the note below)"
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


def _plan_lines(plan: MessagePlan | None, mode: Mode) -> list[str]:
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
    return lines


ROUTING_NOTE = (
    "note: on the SMTP path the milter judges the address Postfix itself resolved ({rcpt_addr}); explain "
    "cannot ask Postfix, so, like the milter without that macro (sendmail(1) path), it refuses a buyer "
    "address in a routing form (%, !, @ in the local part) as unresolved-route"
)


def explain(
    config: Config, addresses: Sequence[str], sender: str, path: SubmissionPath, headers: Sequence[tuple[str, str]]
) -> list[str]:
    """The lines ``amzguard explain`` prints."""
    policy = Policy.from_settings(config.policy)
    mode = config.policy.mode
    # A SQLite file is read only if it exists (explaining must not create one); a database is asked.
    store = open_store(config.store) if config.store.url or config.store.path.exists() else None
    try:
        judgement = judge(policy, sender, path, headers, addresses, store)
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
    return lines + _plan_lines(plan, mode)
