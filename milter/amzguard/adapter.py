"""pymilter adapter: turns libmilter callbacks into policy facts and the policy's plan into milter actions.

Deliberately thin: no decision is taken here. What it owns is the protocol's rules of engagement, which
differ per submission path (see ``SubmissionPath``), and the error policy: an exception in amzguard must
never crash the process nor let the message through unchecked by accident; it gives the configured
answer (tempfail by default) at the first callback where that answer is legal.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import Milter

from .address import Address, Recipient, classify_recipient, parse_address
from .config import Config
from .decision_log import decision_line
from .metrics import DecisionStage, MessageResult, Metrics, MilterStage, StoreOperation
from .secret_scan import SecretScan
from .sendmail_route import Mta, classify_sendmail_recipient, mta_of, uncertain_deletes
from .store import DailyLimitReached, OverLimit, SchemaError, Store, StoreError, open_store
from .transaction import Judgement, Transaction
from .policy.recognise import IPAddress, client_address
from .policy import (
    AddRecipient,
    ChangeHeader,
    Decision,
    DeleteHeader,
    DeleteRecipient,
    MessageFacts,
    MessagePlan,
    Mode,
    Origin,
    Policy,
    ProactiveSent,
    RecognisedBy,
    ReviewSent,
    SubmissionPath,
)
from .policy.limits import uncapped

log = logging.getLogger("amzguard")

NULL_SENDER = Address(raw="", local="", domain="")

TEMPFAIL_TEXT = "amzguard internal error, try again later"
STORE_TEMPFAIL_TEXT = "amzguard opt-out store unavailable, try again later"
SECRET_BOUNCE_TEXT = "bounce carries amzguard's review secret; not sent (refused by amzguard)"

F = TypeVar("F", bound=Callable[..., Any])


def limit_text(over: OverLimit) -> str:
    """The 451 text of a message held for the daily limit (printable ASCII: libmilter drops other replies)."""
    return (f"daily limit of {over.limit} proactive messages to Amazon marketplace {over.marketplace} reached "
            f"({over.count} today, UTC); held for a later retry (amzguard)")  # fmt: skip


@dataclass(frozen=True, slots=True)
class LimitHeld:
    """A message the daily limit holds back (``_judge``): nothing of it was recorded."""

    over: tuple[OverLimit, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The configuration one milter connection works with from start to end, even across a reload."""

    config: Config
    policy: Policy
    store: Store
    wanted_headers: frozenset[str]
    """Lower-case names of the header fields the policy reads; computed once, checked per header."""

    @classmethod
    def of(cls, config: Config, previous: Snapshot | None = None) -> Snapshot:
        # The store object (its connections, its review lock) survives a reload that leaves the store
        # itself as it was: the file or database and how it is reached identify it (store.on_error is how
        # the milter reacts to its failures; a second store object would bring a second review lock, which
        # connections still on the old snapshot would not respect).
        if previous is not None and _store_identity(previous.config) == _store_identity(config):
            store = previous.store
        else:
            store = open_store(config.store)
        policy = Policy.from_settings(config.policy)
        return cls(config=config, policy=policy, store=store, wanted_headers=policy.wanted_headers())

    def uses_store(self) -> bool:
        return self.policy.uses_store()


class Runtime:
    """Holds the current snapshot; connections take it once, a reload swaps it atomically.

    It also owns the process's metrics and knows how many messages are in progress, so that a stop can
    let them finish (drain) instead of cutting them off. Idle connections between messages do not
    hold a stop up: the MTA applies its default action to what it sends after the milter is gone.
    """

    def __init__(self, config: Config, metrics: Metrics | None = None, data_without_reply: bool = True) -> None:
        self.snapshot = Snapshot.of(config)
        check_store(self.snapshot, at_start=True)
        self.metrics = metrics or Metrics()
        self.metrics.config_loaded(config.policy.mode)
        self.metrics.store_backend(self.snapshot.store.backend)
        self.metrics.daily_limits(config.policy.limits)
        self._messages_in_progress = 0
        self._progress_changed = threading.Condition()
        self.data_without_reply = data_without_reply
        """Whether DATA, like connect, MAIL and headers, is negotiated no-reply (a unix socket) or answers
        (TCP). Postfix buffers a no-reply packet until it next waits for a reply, so connect, MAIL and the
        headers travel with the next packet that has one. DATA is the exception: smtpd flushes it alone
        before cleanup(8) takes the milter connection over; unanswered, it is not ACKed at once (delayed
        ACK), and Nagle holds cleanup's first packet ~40 ms, once per message. A unix socket has no Nagle."""

    def swap(self, config: Config) -> None:
        previous = self.snapshot
        self.snapshot = Snapshot.of(config, previous=previous)
        self.metrics.store_backend(self.snapshot.store.backend)
        self.metrics.daily_limits(config.policy.limits)
        check_store(self.snapshot)
        if self.snapshot.store is not previous.store:
            # A store the new config no longer names: its PostgreSQL pool (threads, connections) would live
            # on unused. A message still judged on the old snapshot then gets store.on_error (tempfail).
            previous.store.shutdown()

    def message_started(self) -> None:
        with self._progress_changed:
            self._messages_in_progress += 1

    def message_finished(self) -> None:
        with self._progress_changed:
            self._messages_in_progress -= 1
            self._progress_changed.notify_all()

    def messages_in_progress(self) -> int:
        with self._progress_changed:
            return self._messages_in_progress

    def wait_idle(self, timeout: float) -> int:
        """Wait until no message is in progress, at most ``timeout`` seconds; returns how many still are."""
        deadline = time.monotonic() + timeout
        with self._progress_changed:
            while self._messages_in_progress > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._progress_changed.wait(remaining)
            return self._messages_in_progress


def _store_identity(config: Config) -> tuple[object, ...]:
    store = config.store
    if store.url:
        return (store.url, store.password, store.connect_timeout, store.statement_timeout, store.pool_size,
                store.retention_days)  # fmt: skip
    return (store.path, store.retention_days)


def check_store(snapshot: Snapshot, at_start: bool = False) -> None:
    """Say at start (and reload) whether the store the config needs can be used, instead of at the first
    review request; the milter runs either way (a store that appears later is picked up), except on a
    schema newer than this amzguard knows: a downgraded milter must not write a store it does not
    understand, so it refuses to start (``SchemaError`` reaches ``serve``)."""
    if not snapshot.uses_store():
        return
    try:
        snapshot.store.check()
    except SchemaError as exc:
        if at_start and exc.newer:
            raise
        log.error("opt-out store unusable: %s; messages that need it get store.on_error=%s",
                  exc, snapshot.config.store.on_error)  # fmt: skip
    except StoreError as exc:
        log.error("opt-out store unavailable: %s; messages that need it get store.on_error=%s",
                  exc, snapshot.config.store.on_error)  # fmt: skip


_NOTED: set[str] = set()
_NOTED_LOCK = threading.Lock()


def _note_once(what: str, message: str, *args: object) -> None:
    """Log a missing fact once per process (it is the same for every message until the MTA changes)."""
    with _NOTED_LOCK:
        if what in _NOTED:
            return
        _NOTED.add(what)
    log.info(message, *args)


def submission_path(hostname: str, hostaddr: object) -> SubmissionPath:
    """Tell smtpd(8) from a sendmail(1) submission by the connect information Postfix sends.

    Postfix's cleanup announces local submissions as host ``localhost`` at 127.0.0.1 port 0; no TCP peer
    has port 0. Anything we cannot read is UNKNOWN, which only uses actions legal on both paths.
    """
    if isinstance(hostaddr, tuple) and len(hostaddr) >= 2:
        port = hostaddr[1]
        if port == 0:
            return SubmissionPath.LOCAL
        if isinstance(port, int) and port > 0:
            return SubmissionPath.SMTP
    return SubmissionPath.UNKNOWN


def guarded(stage: MilterStage, replies: bool) -> Callable[[F], F]:
    """Catch every exception of a callback, log it with its traceback, and remember the failure.

    ``replies`` says whether this callback may answer with an error code; callbacks negotiated as
    no-reply must return CONTINUE, so their failure is answered at the next callback that may.
    """

    def wrap(func: F) -> F:
        @functools.wraps(func)
        def wrapper(self: AmzguardMilter, *args: Any) -> Any:
            try:
                return func(self, *args)
            except Exception:
                self.record_failure(stage)
                return self.failure_reply(stage) if replies else Milter.CONTINUE

        return wrapper  # type: ignore[return-value]

    return wrap


class AmzguardMilter(Milter.Base):
    """One instance per MTA connection (libmilter runs connections on their own threads)."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self.snapshot = runtime.snapshot
        self.metrics = runtime.metrics
        self.data_without_reply = runtime.data_without_reply
        self.path = SubmissionPath.UNKNOWN
        self.mta = Mta.UNKNOWN
        """Told by the connect macro ``v`` (sendmail_route.mta_of)."""
        self._warned_macros = False
        self.client: IPAddress | None = None
        """The SMTP client's address (connect); with the SASL login (MAIL FROM) the message's ``Origin``."""
        self.failed_stage: str | None = None
        self.message_open = False
        self.accept_at_data = False
        """Whether this connection may accept mail at DATA (set in negotiate from the snapshot's policy)."""
        self._reset_message()
        self.metrics.connection_opened()

    def negotiate(self, opts: list[int]) -> int:
        """Ask only for the actions amzguard uses, so the MTA knows nothing else will be requested."""
        self._offered_protocol = opts[1]
        result = super().negotiate(opts)
        opts[0] &= MILTER_ACTIONS
        self._actions = opts[0]
        if not self.snapshot.policy.wants_body_step():
            # Only review requests are read (for their order id); without that channel, no body at all.
            self._protocol |= self._offered_protocol & Milter.P_NOBODY
        # DATA must answer to accept mail without buyers there (the MTA then sends no headers, body or
        # end of message for it); it also answers over TCP (see Runtime.data_without_reply). Only on a
        # unix socket with no fast path possible is it a no-reply step.
        self.accept_at_data = self.snapshot.policy.fast_path_possible()
        if self.data_without_reply and not self.accept_at_data:
            self._protocol |= self._offered_protocol & Milter.P_NR_DATA
        else:
            self._protocol &= ~Milter.P_NR_DATA
        opts[1] = self._protocol
        return result

    # -- per-message state -------------------------------------------------------------------------

    def _reset_message(self, sender: Address = NULL_SENDER) -> None:
        self.sender = sender
        # The message's whole judgement lives in the transaction (shared with explain and lint); this
        # class only moves what libmilter says into it and applies what comes out.
        self.trx = Transaction(self.snapshot.policy, self.path, sender, self.snapshot.wanted_headers)
        self._trx_reads_body = True
        """False once the transaction has read all of the body it wants."""
        self._secret_scan: SecretScan | None = None
        self._secret_asked = False
        self.failed_stage = None
        self.rcpt_passed = 0
        self.rcpt_refused = 0
        self.rcpt_tempfailed = 0

    def _start_message(self) -> None:
        self.message_open = True
        self.runtime.message_started()

    def _finish_message(self, result: MessageResult | None) -> None:
        """Count the message once, with what the MTA was finally told (None: nothing to count)."""
        if self.message_open:
            self.message_open = False
            self.runtime.message_finished()
            if result is not None:
                self.metrics.message(result, self.path)

    def _end_transaction(self) -> None:
        """A transaction ends without end of message when amzguard refused or tempfailed every recipient
        at RCPT (the MTA then never sends DATA); count it as the message's result."""
        result = None
        if not self.rcpt_passed and (self.rcpt_refused or self.rcpt_tempfailed):
            result = MessageResult.TEMPFAILED if self.rcpt_tempfailed else MessageResult.REJECTED
        self._finish_message(result)

    def queue_id(self) -> str:
        try:
            value = self.getsymval("i") if self._ctx is not None else None
        except Exception:
            value = None
        return value or "NOQUEUE"

    def record_failure(self, stage: MilterStage) -> None:
        """Log and count the exception being handled; the next callback that may answer gives the error reply."""
        log.exception("%s: internal error in %s callback", self.queue_id(), stage.value)
        self.metrics.error(stage)
        self.failed_stage = self.failed_stage or stage.value

    def failure_reply(self, stage: MilterStage) -> int:
        """The answer to an exception in a callback that may reply: at RCPT only on the SMTP path (a
        tempfail at RCPT of a sendmail(1) submission is a Postfix milter configuration error); the failure
        is remembered and answered at end of message otherwise."""
        if stage is MilterStage.RCPT:
            return self._rcpt_error()
        return self.error_reply(final=stage is MilterStage.EOM)

    def error_reply(self, final: bool = False) -> int:
        """The configured answer to an internal error, in a form legal at the current callback.

        ``final``: answered at end of message. Monitor mode always accepts: it promises to leave the
        mail flow alone, so an amzguard bug found during a rollout must not hold mail either.
        """
        if self.snapshot.config.milter.on_error == "accept" or self.snapshot.policy.settings.mode is Mode.MONITOR:
            self._finish_message(MessageResult.ACCEPTED)
            return Milter.ACCEPT
        if final:
            self._finish_message(MessageResult.TEMPFAILED)
        else:
            self.rcpt_tempfailed += 1
        self.setreply("451", "4.7.1", TEMPFAIL_TEXT)
        return Milter.TEMPFAIL

    # -- callbacks ---------------------------------------------------------------------------------

    @Milter.noreply
    @guarded(MilterStage.CONNECT, replies=False)
    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        self.path = submission_path(hostname, hostaddr) if family != socket.AF_UNIX else SubmissionPath.UNKNOWN
        self.mta = mta_of(self.getsymval("v"))
        # Only smtpd's client is one: on the sendmail(1) path Postfix's cleanup reports localhost/127.0.0.1
        # for every local submission, which must not meet a `client: 127.0.0.1` entry.
        if self.path is SubmissionPath.SMTP:
            text = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else None
            address = client_address(text if isinstance(text, str) else None)
            if address is None:
                address = client_address(self.getsymval("{client_addr}"))
            self.client = address
        return Milter.CONTINUE

    @Milter.noreply
    @guarded(MilterStage.MAIL, replies=False)
    def envfrom(self, mailfrom: str, *params: str) -> int:
        self._end_transaction()
        self._reset_message()
        self._start_message()
        self.sender = self.trx.sender = parse_address(mailfrom)
        if self.snapshot.policy.settings.review.recognise:
            self.trx.origin = self._origin()
        return Milter.CONTINUE

    def _origin(self) -> Origin:
        """The SASL login (``{auth_authen}``, sent at MAIL FROM by Postfix's default milter_mail_macros and
        by Sendmail's) and the client. A missing one meets no entry that needs it: the message is then
        judged without it (as order mail, unless another way recognises it), and that is logged once per
        process, as it is the same for every message of a misconfigured MTA."""
        login = self.getsymval("{auth_authen}") if self.path is SubmissionPath.SMTP else None
        origin = Origin(sasl_login=login or None, client=self.client)
        needs = {by for entry in self.snapshot.policy.settings.review.recognise for by in entry.criteria()}
        if self.path is SubmissionPath.SMTP and origin.sasl_login is None and RecognisedBy.SASL in needs:
            _note_once("sasl", "%s: no {auth_authen} at MAIL FROM (the client did not authenticate, or "
                       "milter_mail_macros lacks it): sasl_login entries of channels.review.recognise meet no "
                       "such message (logged once)", self.queue_id())  # fmt: skip
        if self.path is SubmissionPath.SMTP and origin.client is None and RecognisedBy.CLIENT in needs:
            _note_once("client", "%s: no client address from the MTA (connect, {client_addr}): client entries of "
                       "channels.review.recognise meet no message on this connection", self.queue_id())  # fmt: skip
        if self.path is not SubmissionPath.SMTP and needs & {RecognisedBy.CLIENT, RecognisedBy.SASL}:
            _note_once("local", "%s: a %s submission has no SASL login or client address: only sender and "
                       "subject entries of channels.review.recognise can meet it", self.queue_id(), self.path.value)  # fmt: skip
        return origin

    @guarded(MilterStage.RCPT, replies=True)
    def envrcpt(self, to: str, *params: str) -> int:
        if self.failed_stage:
            return self._rcpt_error()
        with self.metrics.deciding(DecisionStage.RCPT):
            snapshot = self.snapshot
            decision = self.trx.add_recipient(self._classify(to))
            if decision is None:
                self.rcpt_passed += 1
                return Milter.CONTINUE
            recipient = decision.recipient
            self._log_decision(decision, "rcpt")
            if snapshot.policy.settings.mode is Mode.MONITOR:
                # Decided and counted already: the recipient stays in the envelope, but is not judged
                # again at end of message (one would-be decision per recipient, as in enforce mode).
                self.rcpt_passed += 1
                return Milter.CONTINUE
            reject = snapshot.policy.rcpt_reject(recipient, decision.reason)
            self.setreply(reject.code, reject.status, reject.text)
            self.rcpt_refused += 1
            return Milter.REJECT

    def _classify(self, to: str) -> Recipient:
        """The recipient as the MTA on this connection will route it (RCPT macros are readable only here)."""
        buyers = self.snapshot.policy.settings.buyers
        if self.mta is Mta.SENDMAIL:
            # Sendmail's mailer triple from ruleset 0, for every recipient (sendmail_route.py).
            mailer, host, addr = (self.getsymval(name) for name in ("{rcpt_mailer}", "{rcpt_host}", "{rcpt_addr}"))
            if mailer is None or addr is None:
                self._warn_missing_macros()
            return classify_sendmail_recipient(to, buyers, mailer=mailer, host=host, addr=addr)
        smtp = self.path is SubmissionPath.SMTP
        # On Postfix's SMTP path {rcpt_addr} is trivial-rewrite's resolved recipient, the address qmgr
        # relays to; on the sendmail(1) path it merely repeats the envrcpt text (measured on Postfix
        # 3.7.11), so only smtpd's is used.
        resolved = self.getsymval("{rcpt_addr}") if smtp else None
        recipient = classify_recipient(to, buyers, resolved=resolved, smtp=smtp)
        # An MTA that did not say it is Postfix may be a Sendmail without the snippet's `v': its {rcpt_addr}
        # means the same for relayed mail, but Postfix's delete texts need not match there.
        return uncertain_deletes(recipient) if self.mta is Mta.UNKNOWN else recipient

    def _warn_missing_macros(self) -> None:
        if not self._warned_macros:
            self._warned_macros = True
            log.warning("%s: Sendmail sent no {rcpt_mailer}/{rcpt_addr}: every recipient that may be a buyer is "
                        "refused (unresolved-route); ask for them in confMILTER_MACROS_ENVRCPT "
                        "(etc/sendmail/amzguard.mc)", self.queue_id())  # fmt: skip

    def _rcpt_error(self) -> int:
        # A tempfail at RCPT is only legal for smtpd; otherwise answer at end of message.
        return self.error_reply() if self.path is SubmissionPath.SMTP else Milter.CONTINUE

    def data(self) -> int:
        """Accept mail without buyers here (``Policy.accepts_at_data``); everything else goes on to the
        headers. Not ``@Milter.noreply``: whether DATA answers is negotiated per connection (negotiate)."""
        reply = self._data()
        if reply == Milter.CONTINUE and self._protocol & Milter.P_NR_DATA:
            return Milter.NOREPLY
        return reply

    @guarded(MilterStage.DATA, replies=False)
    def _data(self) -> int:
        # Only behind Postfix: a tag on mail accepted here is not deleted by amzguard, and what removes it
        # from mail leaving by SMTP instead is Postfix's smtp_header_checks (docs/fast-path.md). Sendmail
        # has no such shipped setting, and an MTA that did not say which it is may be a Sendmail.
        if not self.accept_at_data or self.failed_stage or self.mta is not Mta.POSTFIX:
            return Milter.CONTINUE
        policy = self.snapshot.policy
        if not policy.accepts_at_data(self.sender, self.trx.recipients):
            return Milter.CONTINUE
        with self.metrics.deciding(DecisionStage.DATA):
            # Every recipient is no buyer: the decision reads no header (one line each, as at eom).
            facts = MessageFacts(sender=self.sender, path=self.path)
            for recipient in self.trx.recipients:
                self._log_decision(policy.decide(facts, recipient), "data")
            self._finish_message(MessageResult.ACCEPTED)
        return Milter.ACCEPT

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        """Declares the header step no-reply for pymilter's negotiation; libmilter calls header_bytes."""
        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        self.header_bytes(name, raw)
        return Milter.CONTINUE

    @guarded(MilterStage.BODY, replies=False)
    def body(self, chunk: bytes) -> int:
        """Read the body only where the transaction wants it (a tagged review request whose subject lacks
        the order id; a message a channel grants to a buyer while a content rule reads bodies), as far
        as it wants it, and search all of a bounce's for the review secret (secret_scan.py); every other
        message is told to skip the rest of its body."""
        if not self._secret_asked:
            self._secret_asked = True
            secret = self.snapshot.policy.secret_to_find(self.trx.header_facts())
            self._secret_scan = SecretScan(secret) if secret else None
        scan = self._secret_scan
        if scan is not None:
            scan.feed(chunk)
        if self._trx_reads_body:
            self._trx_reads_body = self.trx.body(chunk)
        if self._trx_reads_body or (scan is not None and not scan.found):
            return Milter.CONTINUE
        return Milter.SKIP if self._protocol & Milter.P_SKIP else Milter.CONTINUE

    def header_bytes(self, name: str, value: bytes) -> int:
        """Count every header field, keep those the policy reads.

        Overrides pymilter's decoding hook, which libmilter's callback calls for each field (about ten per
        message): one Python frame instead of pymilter's decode step plus the no-reply and error wrappers,
        and only the few fields the policy reads are decoded. Measured with bench/: 0.025-0.04 ms less
        milter CPU per message. Errors follow ``guarded``: logged, answered at end of message.
        """
        try:
            self.trx.header(name if isinstance(name, str) else str(name), value)
        except Exception:
            self.record_failure(MilterStage.HEADER)
        return Milter.NOREPLY if self._protocol & Milter.P_NR_HDR else Milter.CONTINUE

    @guarded(MilterStage.EOM, replies=True)
    def eom(self) -> int:
        with self.metrics.deciding(DecisionStage.EOM):
            if self.failed_stage:
                log.error("%s: message not judged after failure in %s callback", self.queue_id(), self.failed_stage)
                return self.error_reply(final=True)
            if self._secret_scan is not None and self._secret_scan.found and self._refuse_secret_bounce():
                return Milter.REJECT
            policy = self.snapshot.policy
            trx = self.trx
            facts = trx.facts()
            for channel in policy.bad_token_channels(facts):
                log.warning("%s: %s tag with a wrong secret (treated as untagged)", self.queue_id(), channel.value)
                self.metrics.bad_token(channel)
            questions = trx.questions()
            if not questions:
                verdict = self._judge(None)
            else:
                store = self.snapshot.store
                # From look-up to record: a second request for the order waits here. Only deciding and
                # recording happen under the lock; the answer to the MTA is written after it is released,
                # so a slow MTA socket never holds up the other connections' review requests.
                with store.review_lock:
                    answered = None
                    try:
                        with self.metrics.store_call(StoreOperation.LOOKUP, store.backend):
                            answered = store.answer(questions, facts)
                    except StoreError as exc:
                        if self._store_failed(exc, StoreOperation.LOOKUP):
                            return self._store_tempfail()
                    verdict = self._judge(answered)
            if verdict is None:
                return self._store_tempfail()
            if isinstance(verdict, LimitHeld):
                return self._limit_tempfail(verdict.over)
            judgement = verdict
            if judgement.facts.order_id:
                log.info("%s: review request for order %s", self.queue_id(), judgement.facts.order_id)
            for decision in judgement.decisions:
                self._log_decision(decision, "eom")
            for finding in judgement.findings:
                self.metrics.content_finding(finding)
            return self._apply(judgement.plan or MessagePlan(reject=None))

    def _judge(self, answered: MessageFacts | None) -> Judgement | LimitHeld | None:
        """Judge and record (no MTA I/O); None when the message must be tempfailed for the store,
        ``LimitHeld`` when the daily limit holds it (policy/limits.py).

        The record is where the store decides which review request for an order is first (one atomic
        statement, across every host sharing the database): when another message claimed the order after
        our look-up, nothing was recorded, and the message is judged again knowing the order is taken (a
        duplicate, refused as such). The second judgement records no review request, so it cannot lose
        again; the third round is never reached (a fourth in monitor mode, after a limit reached).

        The daily limit is checked in the same record: if a marketplace would go over it, nothing was
        recorded and the message is held (tempfailed). Monitor mode logs that it would be, and records
        again without the limit: the message is delivered, so Amazon counts it, and the count stays the
        real daily volume that an admin needs to choose the limit before enforcing it."""
        policy = self.snapshot.policy
        store = self.snapshot.store
        monitor = policy.settings.mode is Mode.MONITOR
        kept: frozenset[str] = frozenset()
        """Orders whose first review request is remembered already; with one_per_order off that is no
        reason to refuse, and which buyer got the first one is what opt-out notices need."""
        capped = True
        for _ in range(4):
            judgement = self.trx.judge(answered)
            records = tuple(r for r in judgement.records if not (isinstance(r, ReviewSent) and r.order_id in kept))
            if not records:
                return judgement
            if not capped:
                records = uncapped(records)
            try:
                with self.metrics.store_call(StoreOperation.RECORD, store.backend):
                    taken = store.record(records)
            except DailyLimitReached as reached:
                self._log_limit(reached.over, monitor)
                if not monitor:
                    return LimitHeld(reached.over)
                capped = False
                continue
            except StoreError as exc:
                # Forgetting a review request would let a second one through: that message waits. A buyer
                # message not remembered only weakens a later thread check: that message goes on. A count
                # not kept could let the day go over the limit: that message waits too.
                must_record = any(isinstance(record, ReviewSent | ProactiveSent) for record in records)
                if self._store_failed(exc, StoreOperation.RECORD, must_record):
                    return None
                return judgement
            if not taken:
                return judgement
            if not policy.settings.review.one_per_order:
                kept |= taken
                continue
            log.info("%s: order %s got its review request through another message first (another host)",
                     self.queue_id(), ", ".join(sorted(taken)))  # fmt: skip
            answered = replace(judgement.facts, reviewed_orders=judgement.facts.reviewed_orders | taken)
        return None

    def _refuse_secret_bounce(self) -> bool:
        """A bounce that carries the review secret (secret_scan.py) is refused whole, unjudged; True when
        refused (monitor mode only logs it and judges the message as usual). The reply names no secret."""
        monitor = self.snapshot.policy.settings.mode is Mode.MONITOR
        log.warning("%s: from=<> bounce carries the review channel's secret (a refused review request "
                    "bounced by its submitter): %s", self.queue_id(), "would refuse" if monitor else "refused")  # fmt: skip
        if monitor:
            return False
        self.setreply("550", "5.7.1", SECRET_BOUNCE_TEXT)
        self._finish_message(MessageResult.REJECTED)
        return True

    def _store_failed(self, exc: StoreError, operation: StoreOperation, needed: bool = True) -> bool:
        """Log and count a store failure; True when the message must be tempfailed (``store.on_error``)."""
        self.metrics.store_error(operation, self.snapshot.store.backend)
        # Monitor mode changes nothing in the mail flow, not even for a broken store.
        settings = self.snapshot.policy.settings
        tempfail = needed and self.snapshot.config.store.on_error == "tempfail" and settings.mode is Mode.ENFORCE
        consequence = "message tempfailed" if tempfail else "message judged without it"
        log.error("%s: opt-out store unavailable (%s): %s; %s (store.on_error=%s)", self.queue_id(),
                  operation.value, exc, consequence, self.snapshot.config.store.on_error)  # fmt: skip
        return tempfail

    def _store_tempfail(self) -> int:
        self.setreply("451", "4.7.1", STORE_TEMPFAIL_TEXT)
        self._finish_message(MessageResult.TEMPFAILED)
        return Milter.TEMPFAIL

    def _log_limit(self, over: tuple[OverLimit, ...], monitor: bool) -> None:
        limits = self.snapshot.policy.settings.limits
        mode = self.snapshot.policy.settings.mode
        for item in over:
            log.warning("%s: daily limit reached: marketplace=%s day=%s count=%d adding=%d limit=%d: %s",
                        self.queue_id(), item.marketplace, item.day, item.count, item.adding, item.limit,
                        "would tempfail (monitor mode: accepted and counted)" if monitor
                        else "message tempfailed, the MTA retries it later")  # fmt: skip
            self.metrics.limit_reached(limits.bucket(item.marketplace) or item.marketplace, mode)

    def _limit_tempfail(self, over: tuple[OverLimit, ...]) -> int:
        """451 for the whole message (a shop copy in it waits too: a milter cannot tempfail a recipient at
        end of message). On the SMTP path the client gets the 451 and must retry. On the sendmail(1) path
        nobody sees it: Postfix's cleanup_milter.c (cleanup_milter_apply, case '4') sets CLEANUP_STAT_DEFER,
        and pickup.c's cleanup_service_error_reason removes the maildrop file only for CLEANUP_STAT_BAD or
        CLEANUP_STAT_RCPT, so it stays (KEEP_MESSAGE_FILE) and pickup's next scan (60 s, or postkick)
        submits it again, without a bounce (tests/e2e/test_daily_limit.py shows both)."""
        self.setreply("451", "4.7.1", limit_text(over[0]))
        self._finish_message(MessageResult.HELD)
        return Milter.TEMPFAIL

    @guarded(MilterStage.ABORT, replies=False)
    def abort(self) -> int:
        self._end_transaction()
        self._reset_message()
        return Milter.CONTINUE

    def close(self) -> int:
        try:
            self._end_transaction()
            # SQLite keeps one connection per MTA connection (per pymilter thread state);
            # Python does not reliably free thread-local data of C-created thread states, so close it
            # here, or every SMTP session would leave its file descriptors open (the soak test shows it).
            self.snapshot.store.close()
        except Exception:
            log.exception("%s: internal error in close callback", self.queue_id())
        finally:
            self.metrics.connection_closed()
        return Milter.CONTINUE

    # -- applying the plan -------------------------------------------------------------------------

    def _apply(self, plan: MessagePlan) -> int:
        # Changes first, even before a REJECT: Postfix applies header edits as they arrive, so a message it
        # bounces (sendmail(1) path) no longer carries the review tag (see MessagePlan).
        for change in plan.changes:
            match change:
                case DeleteRecipient(address=address):
                    self.delrcpt(address)
                case AddRecipient(address=address, esmtp=esmtp):
                    # An MTA without addrcpt_par still gets the recipient, only without its ORCPT.
                    params = " ".join(esmtp) if esmtp and self._actions & Milter.ADDRCPT_PAR else None
                    self.addrcpt(address, params)
                case DeleteHeader(name=name, index=index):
                    self.chgheader(name, index, None)
                case ChangeHeader(name=name, index=index, value=value):
                    self.chgheader(name, index, value)
        if plan.kept_fields and plan.reject is None:
            log.warning("%s: visible %s kept unchanged: names the marked address but cannot be rewritten safely",
                        self.queue_id(), ", ".join(plan.kept_fields))  # fmt: skip
            self.metrics.field_kept(len(plan.kept_fields))
        if plan.reject is not None:
            self.setreply(plan.reject.code, plan.reject.status, plan.reject.text)
            self._finish_message(MessageResult.REJECTED)
            return Milter.REJECT
        self._finish_message(MessageResult.MODIFIED if plan.changes else MessageResult.ACCEPTED)
        return Milter.ACCEPT

    def _log_decision(self, decision: Decision, stage: str) -> None:
        settings = self.snapshot.policy.settings
        privacy = self.snapshot.config.log_addresses
        log.info(decision_line(self.queue_id(), self.sender, decision, self.path, stage, settings.mode, privacy))
        self.metrics.recipient(decision, settings.mode)


MILTER_ACTIONS = Milter.ADDRCPT | Milter.ADDRCPT_PAR | Milter.DELRCPT | Milter.CHGHDRS
"""Only the actions amzguard uses, so the MTA knows nothing else will be asked of it."""
