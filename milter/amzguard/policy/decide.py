"""``Policy``: asks its channel rules, decides per recipient, and turns the decisions into one plan.

Pure: facts in, decisions and milter actions out. What only a database knows (opt-outs, orders already
asked for a review, messages a buyer sent us) reaches the policy as facts: each rule says what it needs
to know (``store_questions``), the driver (transaction.py) looks it up and passes the answers in
``MessageFacts``, and each rule says what to remember (``store_records``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace

from ..address import Address, Recipient
from ..content import needs_any_body as content_needs_body
from ..content import wanted_headers as content_headers
from ..orderid import find_order_id, order_id_in_body
from .actions import MessagePlan, Reject, plan_message, refusal_text
from .limits import counted
from .senders import envelope_approved, sender_approved
from .channels import CONTENT_HEADERS, ChannelBase, ChannelRule, CriticalChannel, ReplyChannel, ReviewChannel
from .model import (
    Channel,
    Decision,
    MessageFacts,
    NO_ORIGIN,
    Origin,
    PROACTIVE_CHANNELS,
    Outcome,
    PolicySettings,
    Reason,
    ReplyCheck,
    StoreQuestions,
    StoreRecord,
    SubmissionPath,
)


def _unmark_unsure(facts: MessageFacts, recipient: Recipient) -> bool:
    """A marked buyer on the SMTP path whose queued spelling amzguard cannot reproduce (a comment or white
    space in the RCPT text, see queued.internal_form): unmarking it would add the unmarked copy while a
    delete that matches nothing leaves the marked one, so it is refused instead (fail closed). The oracle
    found ``<@a.example:(c)blacklisted-…@amazon.co.uk>`` delivered twice. On the sendmail(1) path no delete
    is certain and that is documented (docs/recipients.md); behind Sendmail deletes are exact."""
    return recipient.marked and facts.path is SubmissionPath.SMTP and not recipient.delete_exact


def _tagged(rule_class: type) -> bool:
    """The rule recognises its mail by a secret: it overrides ``ChannelBase.bad_token``."""
    return getattr(rule_class, "bad_token", None) is not ChannelBase.bad_token


@dataclass(frozen=True, slots=True)
class Policy:
    settings: PolicySettings
    rules: tuple[ChannelRule, ...] = field(default=())

    @classmethod
    def from_settings(cls, settings: PolicySettings) -> Policy:
        # The review rule comes first: a tagged review request is judged as one (opt-out, one per order)
        # even if it also looks like a reply or carries the critical marker.
        rules: tuple[ChannelRule, ...] = (
            ReviewChannel(settings.review, settings.buyers.marked_prefixes),
            ReplyChannel(settings.reply, settings.buyers),
            CriticalChannel(settings.critical),
        )
        return cls(settings=settings, rules=rules)

    # -- what the drivers must read, look up and remember: the rules' declarations combined ----------

    def wants_body_step(self) -> bool:
        """Whether the body is needed at all: a rule that reads it may be on (the review channel searches
        it for an order id), or a content rule that reads bodies judges what a channel grants. If not,
        the body step is negotiated away for the whole connection."""
        return any(rule.reads_bodies() for rule in self.rules) or (
            self._any_channel() and content_needs_body(self.settings.content)
        )

    def _any_channel(self) -> bool:
        return any(rule.enabled() for rule in self.rules)

    def wants_body(self, facts: MessageFacts) -> bool:
        """Whether some rule needs this message's body (a tagged review request without an order id in
        its subject). The content rules' own needs are the transaction's."""
        return any(rule.wants_body(facts) for rule in self.rules)

    def secret_to_find(self, facts: MessageFacts) -> bytes | None:
        """The review secret, for a null-sender message (a bounce) whose body must not carry it out
        (secret_scan.py says where such bounces come from); None for every other message."""
        if not facts.sender.is_empty:
            return None
        for rule in self.rules:
            if isinstance(rule, ReviewChannel) and rule.settings.enabled:
                return rule.settings.token or None
        return None

    def read_order_id(self, facts: MessageFacts, body: bytes = b"") -> MessageFacts:
        """The facts with the order id, for a message some rule reads it of: subject, else body."""
        if not any(rule.reads_order_id(facts) for rule in self.rules):
            return facts
        content = [(name, value) for name, value in facts.headers if name.casefold() in CONTENT_HEADERS]
        found = find_order_id(facts.subject()) or (order_id_in_body(content, body) if body else None)
        return replace(facts, order_id=found)

    def store_questions(self, facts: MessageFacts, recipients: Iterable[Recipient]) -> StoreQuestions:
        buyers = [recipient for recipient in recipients if recipient.is_buyer]
        questions = StoreQuestions()
        if buyers:
            for rule in self.rules:
                questions = questions.merged(rule.store_questions(facts, buyers))
        return questions

    def store_records(self, facts: MessageFacts, decisions: Iterable[Decision]) -> tuple[StoreRecord, ...]:
        """What the store must remember once the message is accepted (each rule's records)."""
        decisions = tuple(decisions)
        records = tuple(record for rule in self.rules for record in rule.store_records(facts, decisions))
        # The daily limit's counts go into the same store transaction as the review request (policy/limits.py).
        return records + counted(self.settings.limits, decisions, self.settings.buyers.marked_prefixes)

    def uses_store(self) -> bool:
        return any(rule.uses_store() for rule in self.rules) or self.settings.limits.enabled

    def fast_path_possible(self) -> bool:
        """Whether any message at all can leave the milter at DATA under these settings (``accepts_at_data``).

        Not with the reply channel's thread check: it records the messages buyers send the shop (From:
        and Message-ID), which are mail without buyer recipients. Not with a tagged channel open to every
        sender: then any message may carry the secret, and only the end of message deletes it (a review
        channel that recognises its mail only by ``recognise`` entries has no secret to leak, and entries
        matter only for mail to buyers, which never takes the fast path). When this is False, DATA stays a no-reply step on unix sockets (nothing to decide there)."""
        for rule in self.rules:
            if isinstance(rule, ReplyChannel) and rule.settings.enabled and rule.settings.check is ReplyCheck.THREAD:
                return False
            if isinstance(rule, ReviewChannel) and rule.settings.enabled and rule.settings.token \
                    and not rule.settings.allowed_senders:  # fmt: skip
                return False
        return True

    def accepts_at_data(self, sender: Address, recipients: Iterable[Recipient]) -> bool:
        """Whether this message may be accepted at DATA, before its headers: the MTA then sends no header,
        body or end-of-message events for it (the fast path for ordinary mail, 7 in 10 messages of a shop).

        Only when no recipient still in the envelope is a buyer (every decision is then not-buyer, which
        reads no header), no rule reads mail without buyers (``fast_path_possible``), the message is no
        bounce whose body is searched for the review secret (``secret_to_find``), and the sender
        cannot use a tagged channel: mail that may carry the review secret still goes to the end of
        message, where the tag is deleted (``stripped_headers``). A tag on other mail is removed by the
        shipped ``smtp_header_checks`` when it leaves by SMTP (docs/fast-path.md)."""
        if any(recipient.is_buyer for recipient in recipients) or not self.fast_path_possible():
            return False
        if self.secret_to_find(MessageFacts(sender=sender, path=SubmissionPath.UNKNOWN)) is not None:
            return False  # a bounce: its body is searched for the secret (secret_scan.py)
        return not any(rule.may_carry_secret(sender) for rule in self.rules)

    def wanted_headers(self) -> frozenset[str]:
        """Lower-case names of the header fields the adapter must collect (the content rules' too, which
        only matter for messages to buyers: see ``channel_headers``)."""
        names = self.channel_headers()
        if not self._any_channel():
            return names
        # From: for the approved-senders check (only mail to buyers reads it, as the content rules' fields).
        checked = frozenset({"from"}) if self.settings.approved_senders.active() else frozenset()
        return names | content_headers(self.settings.content) | checked

    def channel_headers(self) -> frozenset[str]:
        """The header fields the channel rules read (enough for a message without buyer recipients)."""
        return frozenset(name for rule in self.rules for name in rule.headers())

    def stripped_headers(self) -> tuple[str, ...]:
        """Header fields that must never leave the MTA (they carry the review secret)."""
        return tuple(dict.fromkeys(name for rule in self.rules for name in rule.stripped_headers()))

    # -- decisions ---------------------------------------------------------------------------------

    def decide_at_rcpt(
        self, sender: Address, recipient: Recipient, path: SubmissionPath, origin: Origin = NO_ORIGIN
    ) -> Decision | None:
        """A refusal that is already certain before the headers are seen, or None to decide at end of message.

        Only on the SMTP path: refusing a recipient at RCPT of a sendmail(1) submission is a Postfix
        milter configuration error that leaves the message stuck in the maildrop. ``origin``: the SASL
        login and client known at RCPT, which ``recognise`` entries may need (the subject is not known yet:
        an entry whose other criteria hold keeps the recipient to the end of message).
        """
        if path is not SubmissionPath.SMTP or not recipient.is_buyer:
            return None
        if recipient.unresolved:
            return Decision(recipient, Outcome.REFUSE, Reason.UNRESOLVED_ROUTE)
        if not any(rule.possible(sender, origin) for rule in self.rules):
            return Decision(recipient, Outcome.REFUSE, Reason.BUYER_MAIL)
        if not envelope_approved(self.settings.approved_senders, sender, recipient):
            # Every channel's grant is vetoed for an unapproved sender, so this is certain already.
            return Decision(recipient, Outcome.REFUSE, Reason.SENDER_NOT_APPROVED)
        return None

    def decide(self, facts: MessageFacts, recipient: Recipient) -> Decision:
        """The final decision for one recipient at end of message (content rules: transaction.py)."""
        if not recipient.is_buyer:
            return Decision(recipient, Outcome.DELIVER, Reason.NOT_BUYER)
        if recipient.unresolved or _unmark_unsure(facts, recipient):
            return Decision(recipient, Outcome.REFUSE, Reason.UNRESOLVED_ROUTE)
        approved = self.settings.approved_senders
        for rule in self.rules:
            # How a rule recognised the message implies it grants it (the review rule's grants is exactly
            # this answer), so the answer is asked once, not again after grants (it was asked twice per
            # buyer: 10.4 us per decide for a tagged request, 18.9 us with three entries, the last matching).
            by = rule.recognised_by(facts)
            if by or rule.grants(facts, recipient):
                if not sender_approved(approved, facts.sender, facts.header_values("from"), recipient):
                    return Decision(recipient, Outcome.REFUSE, Reason.SENDER_NOT_APPROVED, rule.channel,
                                    recognised_by=by)  # fmt: skip
                veto = rule.veto(facts, recipient)
                if veto is not None:
                    return Decision(recipient, Outcome.REFUSE, veto, rule.channel, recognised_by=by)
                if not recipient.marked:
                    return Decision(recipient, Outcome.DELIVER, Reason.CHANNEL, rule.channel, recognised_by=by)
                if recipient.unmarked is None:
                    return Decision(recipient, Outcome.REFUSE, Reason.MARKER_ONLY, rule.channel, recognised_by=by)
                return Decision(recipient, Outcome.DELIVER_UNMARKED, Reason.CHANNEL, rule.channel, recognised_by=by)
        return Decision(recipient, Outcome.REFUSE, Reason.BUYER_MAIL)

    def bad_token_channels(self, facts: MessageFacts) -> tuple[Channel, ...]:
        """Channels whose tag the message carries with a wrong secret (a fact for metrics, not a decision)."""
        return tuple(
            # Each rule answers (ChannelBase: never); an isinstance() test against the runtime-checkable
            # TaggedChannelRule protocol cost ~12 us per rule per message (typing walks the protocol each time).
            rule.channel for rule in self.rules if rule.bad_token(facts)
        )

    def rcpt_reject(self, recipient: Recipient, reason: Reason = Reason.BUYER_MAIL) -> Reject:
        return Reject(refusal_text(self.settings.text_for(reason), [recipient]))

    def plan(
        self,
        facts: MessageFacts,
        decisions: tuple[Decision, ...],
        header_counts: dict[str, int],
        address_fields: tuple[AddressField, ...] = (),
    ) -> MessagePlan:
        return plan_message(self, facts, decisions, header_counts, address_fields)


CHANNEL_RULES: tuple[type, ...] = (ReviewChannel, ReplyChannel, CriticalChannel)
"""The rule classes ``Policy.from_settings`` builds, in the order they are asked."""


def _rule_channel(rule: type) -> Channel:
    return next(f.default for f in fields(rule) if f.name == "channel")  # type: ignore[return-value]


def possible_decisions(rules: tuple[type, ...] = CHANNEL_RULES) -> tuple[tuple[Outcome, Reason, Channel], ...]:
    """Every (outcome, reason, channel) that ``Policy.decide`` and ``decide_at_rcpt`` can return, and the
    content rules after them (transaction.py).

    Read off the decision tree in ``Policy.decide``: a recipient that is no buyer is delivered
    (not-buyer, no channel); a buyer whose destination or queued spelling is not certain is refused
    (unresolved-route, no channel); a buyer no rule grants is refused (buyer-mail, no channel); a buyer a rule
    grants is refused as sender-not-approved (that channel; without one when decided at RCPT from the
    envelope sender alone), or with one of that rule's ``vetoes``, or refused as marker-only (nothing left after
    the marker), or delivered, marked or unmarked (channel). A granted buyer the content rules refuse is
    refused with reason content, or no-order-id when missing-order-id is the only refusing finding (that
    rule judges proactive channels only: review, critical). So a reason like opted-out appears only with
    the channel that vetoes it. The metrics pre-create exactly these label sets; a property test checks
    that the policy never returns anything else.
    """
    combos = [(Outcome.DELIVER, Reason.NOT_BUYER, Channel.NONE), (Outcome.REFUSE, Reason.BUYER_MAIL, Channel.NONE),
              (Outcome.REFUSE, Reason.UNRESOLVED_ROUTE, Channel.NONE),
              (Outcome.REFUSE, Reason.SENDER_NOT_APPROVED, Channel.NONE)]  # fmt: skip
    for rule in rules:
        channel = _rule_channel(rule)
        combos.append((Outcome.REFUSE, Reason.SENDER_NOT_APPROVED, channel))
        combos += [(Outcome.REFUSE, veto, channel) for veto in rule.vetoes]  # type: ignore[attr-defined]
        combos.append((Outcome.REFUSE, Reason.CONTENT, channel))
        if channel in PROACTIVE_CHANNELS:
            combos.append((Outcome.REFUSE, Reason.NO_ORDER_ID, channel))
        combos += [(Outcome.REFUSE, Reason.MARKER_ONLY, channel), (Outcome.DELIVER, Reason.CHANNEL, channel),
                   (Outcome.DELIVER_UNMARKED, Reason.CHANNEL, channel)]  # fmt: skip
    return tuple(combos)


def tagged_channels(rules: tuple[type, ...] = CHANNEL_RULES) -> tuple[Channel, ...]:
    """Channels whose rule recognises its mail by a secret (it overrides ``ChannelBase.bad_token``): the
    only ones a wrong secret can be counted for."""
    return tuple(_rule_channel(rule) for rule in rules if _tagged(rule))
