"""One message's judgement from MAIL FROM to end of message: the object the milter adapter, ``explain``
and ``lint`` all drive, so the three cannot disagree.

Pure: no I/O, no pymilter. The driver feeds it what the MTA (or a file, or the command line) says
(envelope, header fields, body chunks), asks it what the store must answer (``questions``), passes the
answers in, and applies the judgement's plan and records. It owns the order of the policy calls, the
header bookkeeping, the body decision and the content rules; the drivers own only I/O (libmilter, the
store, printing). Tests drive it directly with a fake store.

Life of one message::

    trx = Transaction(policy, path, sender)
    trx.rcpt(raw) ...                  # a Decision when certain at RCPT, else None
    trx.header(name, value) ...
    if trx.wants_body(): trx.body(chunk) ...   # body() says whether more is wanted (else SKIP)
    questions = trx.questions()        # ask the store (read-only for explain/lint) if non-empty
    judgement = trx.judge(answered_facts_or_None)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from .address import Address, Recipient, classify_recipient
from .policy.visible_recipients import ADDRESS_FIELDS
from .content import (
    BodyScanner,
    needs_any_body,
    ContentAction,
    ContentRule,
    ContentSettings,
    ContentVerdict,
    ContentView,
    Finding,
    HeaderField,
    judge_content,
    needs_body,
)
from .content.rules import ATTACHMENT_RULES, order_id_in_view
from .policy import (
    AddressField,
    Channel,
    Decision,
    MessageFacts,
    MessagePlan,
    Mode,
    NO_ORIGIN,
    Origin,
    PROACTIVE_CHANNELS,
    Outcome,
    Policy,
    Reason,
    StoreQuestions,
    StoreRecord,
    SubmissionPath,
)

MAX_FIELDS_PER_HEADER = 50
MAX_HEADER_VALUE = 8192
"""Only short header fields matter to the policy (tags, subjects); longer ones are cut to bound memory."""
MAX_ADDRESS_FIELD = 32768
"""A To:/Cc: longer than this is kept only in part and never rewritten (a long Cc list is ~2 KB)."""



@dataclass(frozen=True, slots=True)
class Judgement:
    """Everything decided about one message; what the drivers apply, log, count and print."""

    facts: MessageFacts
    rcpt_decisions: tuple[Decision, ...]
    """Decisions already certain at RCPT TO (refused there in enforce mode; logged once in monitor mode)."""
    decisions: tuple[Decision, ...]
    """End-of-message decisions for the recipients still in the envelope, content findings included."""
    plan: MessagePlan | None
    """None when nothing reaches end of message (every recipient refused at RCPT)."""
    records: tuple[StoreRecord, ...]
    """What the store must remember once the plan is applied (empty when the message is refused)."""
    findings: tuple[Finding, ...] = ()
    """Every content finding of the message, once each (the metric counts these)."""
    body_read: bool = False
    """Whether any body was read (False: no granted buyer, or no rule needed it)."""
    truncated: bool = False

    def all_decisions(self) -> tuple[Decision, ...]:
        return self.rcpt_decisions + self.decisions


class Transaction:
    """The state of one SMTP transaction as far as amzguard judges it."""

    def __init__(
        self,
        policy: Policy,
        path: SubmissionPath,
        sender: Address,
        wanted_headers: frozenset[str] | None = None,
        origin: Origin = NO_ORIGIN,
    ) -> None:
        self.policy = policy
        self.content: ContentSettings = policy.settings.content
        self.path = path
        self.sender = sender
        self.origin = origin
        """SASL login and client address (the adapter sets it at MAIL FROM; explain and lint from options)."""
        self.wanted = wanted_headers if wanted_headers is not None else policy.wanted_headers()
        self._wanted_now: frozenset[str] | None = None
        self.recipients: list[Recipient] = []
        self.rcpt_decisions: list[Decision] = []
        self.headers: list[HeaderField] = []
        self.header_counts: dict[str, int] = {}
        self.address_fields: list[AddressField] = []
        """To:/Cc: fields, kept only when some recipient may be unmarked (the visible To: follows it)."""
        self._unmarking: bool | None = None
        self._line = 0
        """Lines of header read so far (the message line of the next field is this + 1)."""
        self._body_wanted: bool | None = None
        self._scanner: BodyScanner | None = None
        self._measure = False
        self._view: ContentView | None = None
        self._facts: MessageFacts | None = None
        self._header_facts: MessageFacts | None = None
        self._body_rules = needs_any_body(self.content)
        """Whether any active content rule can read a body (else granted messages need none for them)."""

    # -- envelope ----------------------------------------------------------------------------------

    def rcpt(self, raw: str, resolved: str | None = None) -> Decision | None:
        """Classify one recipient; a Decision when it is certain at RCPT (refused there in enforce mode),
        None when it is judged at end of message. In monitor mode a recipient decided at RCPT stays in
        the envelope but is not judged again (one would-be decision per recipient, as in enforce mode).

        ``resolved``: Postfix's ``{rcpt_addr}`` on the SMTP path (what it routes to); explain and lint
        cannot ask Postfix and judge as the milter does without it (see address.classify_recipient)."""
        smtp = self.path is SubmissionPath.SMTP
        return self.add_recipient(classify_recipient(raw, self.policy.settings.buyers, resolved=resolved, smtp=smtp))

    def add_recipient(self, recipient: Recipient) -> Decision | None:
        """``rcpt`` for a recipient the driver classified itself (the milter: as the MTA on its connection
        routes it, Postfix or Sendmail, see sendmail_route.py)."""
        decision = self.policy.decide_at_rcpt(self.sender, recipient, self.path, self.origin)
        if decision is None:
            self.recipients.append(recipient)
        else:
            self.rcpt_decisions.append(decision)
        return decision

    # -- header ------------------------------------------------------------------------------------

    def header(self, name: str, value: str | bytes, line: int | None = None) -> None:
        """One header field, in message order, as the MTA passes it (bytes from libmilter: only the
        fields some rule reads are decoded). Folded values keep their line breaks, which keeps the line
        numbers of findings right; ``line``: where the field starts, when the driver knows (a file)."""
        key = name.casefold()
        self._header_facts = None
        wanted = self._wanted_now
        if wanted is None:
            # The recipients are all known once the header arrives: the content rules' fields are kept
            # only when some recipient is a buyer (order mail to customers, ~70% of a shop's, decodes
            # four fields fewer; measured 15 us a message in-process).
            wanted = self._wanted_now = (
                self.wanted if any(r.is_buyer for r in self.recipients) else self.policy.channel_headers()
            )
        counts = self.header_counts
        seen = counts[key] = counts.get(key, 0) + 1
        if key in ADDRESS_FIELDS and seen <= MAX_FIELDS_PER_HEADER:
            self._address_field(name, seen, value)
        if line is not None:
            self._line = line - 1
        line = self._line + 1
        if isinstance(value, bytes):
            self._line += value.count(b"\n") + 1
            if seen <= MAX_FIELDS_PER_HEADER and key in wanted:
                text = value.decode("utf-8", "surrogateescape")
                self.headers.append(HeaderField(name, text[:MAX_HEADER_VALUE], line))
        else:
            self._line += value.count("\n") + 1
            if seen <= MAX_FIELDS_PER_HEADER and key in wanted:
                self.headers.append(HeaderField(name, value[:MAX_HEADER_VALUE], line))

    def _address_field(self, name: str, index: int, value: str | bytes) -> None:
        if self._unmarking is None:
            self._unmarking = any(r.unmarked for r in self.recipients)
        if not self._unmarking:
            return
        complete = len(value) <= MAX_ADDRESS_FIELD
        if isinstance(value, bytes):
            try:
                text = value[:MAX_ADDRESS_FIELD].decode("utf-8")
            except UnicodeDecodeError:
                # Not UTF-8: rewriting would have to guess its charset; it stays as it is (counted).
                text, complete = value[:MAX_ADDRESS_FIELD].decode("utf-8", "replace"), False
        else:
            text = value[:MAX_ADDRESS_FIELD]
            complete = complete and not any("\udc80" <= char <= "\udcff" for char in text)
        self.address_fields.append(AddressField(name, index, text, complete))

    def header_facts(self) -> MessageFacts:
        facts = self._header_facts
        if facts is None or facts.sender is not self.sender or facts.origin is not self.origin:
            self._header_facts = MessageFacts(
                sender=self.sender, path=self.path, headers=tuple((f.name, f.value) for f in self.headers),
                origin=self.origin,
            )
        return self._header_facts

    # -- body --------------------------------------------------------------------------------------

    def granted_channels(self, facts: MessageFacts) -> tuple[Channel, ...]:
        """The channels that grant this message to some buyer recipient (before any veto), in rule order."""
        channels: list[Channel] = []
        for recipient in self.recipients:
            if not recipient.is_buyer:
                continue
            for rule in self.policy.rules:
                if rule.grants(facts, recipient):
                    if rule.channel not in channels:
                        channels.append(rule.channel)
                    break
        return tuple(channels)

    def wants_body(self) -> bool:
        """Whether the body must be read, decided once after the headers: a tagged review request whose
        subject has no order id, or a message a channel grants to a buyer while some content rule that
        reads the body is on. Every other message skips its body (the adapter answers SKIP)."""
        if self._body_wanted is None:
            facts = self.header_facts()
            for_order_id = self.policy.wants_body(facts)
            granted = self.granted_channels(facts) if self._body_rules else ()
            for_content = any(
                needs_body(self.content, self.headers, channel in PROACTIVE_CHANNELS) for channel in granted
            )
            self._body_wanted = for_order_id or for_content
            if self._body_wanted:
                # Attachments are measured to the end; text is read up to content.max_bytes either way.
                active = self.content.active()
                self._measure = for_content and any(rule in active for rule in ATTACHMENT_RULES)
                self._scanner = BodyScanner(
                    self.headers, self._line + 2, self.content.max_bytes, self.content.skip_quoted
                )
        return self._body_wanted

    def body(self, chunk: bytes) -> bool:
        """Read one body chunk; whether more of the body is wanted (False: the rest may be skipped)."""
        if not self.wants_body() or self._scanner is None:
            return False
        scanner = self._scanner
        scanner.feed(chunk)
        if self._measure:
            return True
        # Without attachments to measure, the first content.max_bytes of the body are all that is read
        # (the bound the order-id search always had); what may follow counts as not read.
        if scanner.truncated or scanner.body_bytes >= self.content.max_bytes:
            scanner.truncated = True
            return False
        return True

    def _finish_body(self) -> ContentView | None:
        if self._scanner is not None and self._view is None:
            self._view = self._scanner.finish()
        return self._view

    # -- end of message --------------------------------------------------------------------------

    def facts(self) -> MessageFacts:
        """The facts at end of message: headers and the review request's order id (subject, else body)."""
        if self._facts is None:
            facts = self.policy.read_order_id(self.header_facts())
            view = self._finish_body()
            if facts.order_id is None and view is not None and self.policy.wants_body(facts):
                facts = replace(facts, order_id=order_id_in_view(view))
            self._facts = facts
        return self._facts

    def questions(self) -> StoreQuestions:
        """What the store must answer before the judgement (empty: nothing, the store is not touched)."""
        return self.policy.store_questions(self.facts(), self.recipients)

    def judge(self, answered: MessageFacts | None = None) -> Judgement:
        """The judgement; ``answered``: the facts completed by the store's answers to ``questions()``."""
        policy = self.policy
        facts = answered if answered is not None else self.facts()
        decisions = [policy.decide(facts, recipient) for recipient in self.recipients]
        verdicts = self._content_verdicts(facts, decisions)
        decisions = [self._with_content(decision, verdicts) for decision in decisions]
        findings = tuple(dict.fromkeys(f for verdict in verdicts.values() for f in verdict.findings))
        reached_eom = bool(self.recipients) or (policy.settings.mode is Mode.MONITOR and bool(self.rcpt_decisions))
        fields = tuple(self.address_fields)
        plan = policy.plan(facts, tuple(decisions), self.header_counts, fields) if reached_eom else None
        records = policy.store_records(facts, decisions) if plan is not None and plan.reject is None else ()
        return Judgement(
            facts=facts,
            rcpt_decisions=tuple(self.rcpt_decisions),
            decisions=tuple(decisions),
            plan=plan,
            records=records,
            findings=findings,
            body_read=self._view is not None,
            truncated=self._view.truncated if self._view is not None else False,
        )

    def _content_verdicts(self, facts: MessageFacts, decisions: Iterable[Decision]) -> dict[bool, ContentVerdict]:
        """The content verdict per kind of grant (proactive or not), only for kinds some buyer got."""
        verdicts: dict[bool, ContentVerdict] = {}
        if not self.content.active():
            return verdicts  # every rule off: nothing to judge
        for decision in decisions:
            if decision.channel is Channel.NONE or not decision.recipient.is_buyer:
                continue
            if decision.refused:
                continue  # already refused (opted out, duplicate, marker only): content changes nothing
            proactive = decision.channel in PROACTIVE_CHANNELS
            if proactive not in verdicts:
                verdicts[proactive] = judge_content(self.content, self.headers, self._view, proactive)
        return verdicts

    def _with_content(self, decision: Decision, verdicts: dict[bool, ContentVerdict]) -> Decision:
        if decision.channel is Channel.NONE or not decision.recipient.is_buyer or decision.refused:
            return decision
        verdict = verdicts.get(decision.channel in PROACTIVE_CHANNELS)
        if verdict is None:
            return decision
        findings = verdict.findings
        refusing = [f for f in findings if f.action is ContentAction.REFUSE]
        if refusing:
            only_order_id = all(f.rule is ContentRule.MISSING_ORDER_ID for f in refusing)
            reason = Reason.NO_ORDER_ID if only_order_id else Reason.CONTENT
            return replace(decision, outcome=Outcome.REFUSE, reason=reason, findings=findings)
        return replace(decision, findings=findings)
