"""Prometheus metrics of one amzguard process, served over HTTP by the milter process itself.

Why a class and a private registry: the runtime owns its metrics like it owns its config, so tests can
make as many independent instances as they like and nothing lives in module globals.

Label values come only from small fixed sets (the policy's enums and the few names below), never from
mail data: no address, subject or queue id ever becomes a label. Every series that can occur is created at
start-up with the value 0, so alerts and dashboards work on a freshly started process and ``rate()`` sees
the first event; series that cannot occur are not created. The label sets are derived from the policy:
``possible_decisions()`` (which reason goes with which decision and channel) for the recipients,
``tagged_channels()`` for wrong secrets, the enums for the rest, so a new rule or reason shows up by itself.

The ``_created`` series (one per counter and histogram series, the time it was created) are off: they were
211 of 466 lines of a fresh endpoint, and Prometheus does not use them. prometheus_client 0.16 (Debian 12)
reads ``PROMETHEUS_DISABLE_CREATED_SERIES`` once, when it is first imported, so it is set before the import
below; 0.17 and later also have ``disable_created_metrics()``, called for the case it was imported earlier.
"""

from __future__ import annotations

import itertools
import os
import platform
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from importlib import metadata
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

os.environ["PROMETHEUS_DISABLE_CREATED_SERIES"] = "True"

import prometheus_client  # noqa: E402  (after the variable: 0.16 reads it at import)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from . import __version__
from .content import REMOVABLE_RULES, ContentAction, ContentRule, Finding
from .store import BACKENDS, SOURCES, Store, StoreError
from .policy import Channel, Decision, Mode, Outcome, Reason, SubmissionPath, possible_decisions, tagged_channels
from .policy import RecognisedBy  # issue 12: review_recognised
from .policy.limits import NO_LIMITS, LimitSettings
from .policy.restriction import ALL  # issue 12 item 7: the daily limit

if hasattr(prometheus_client, "disable_created_metrics"):
    prometheus_client.disable_created_metrics()

NAMESPACE = "amzguard"

DECISION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""A decision is pure computation (well under a millisecond); the upper buckets catch a starved process."""
STORE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.01, 0.1, 1.0, 5.0)
"""A look-up takes ~0.05 ms on SQLite and ~0.3 ms on PostgreSQL over loopback (bench/); the top buckets
catch a database waited for up to store.connect_timeout plus store.statement_timeout."""


class MessageResult(StrEnum):
    """What the MTA was finally told about one message (one SMTP transaction)."""

    ACCEPTED = "accepted"
    """Passed unchanged (also every message in monitor mode)."""
    MODIFIED = "modified"
    """Passed with changes: recipients swapped or unmarked, tag header deleted."""
    REJECTED = "rejected"
    """Refused whole: at end of data, or every recipient refused at RCPT."""
    TEMPFAILED = "tempfailed"
    """A temporary failure: an internal error (``milter.on_error: tempfail``) or an opt-out store that
    could not be used (``store.on_error: tempfail``)."""
    HELD = "held"
    """Tempfailed (451) for the daily limit of proactive messages (policy/limits.py): the MTA sends it on
    a later day. The same reply as ``tempfailed``, counted apart so that the alert on tempfails (a fault)
    does not fire for hours while a limit works as configured."""


class MilterStage(StrEnum):
    """The milter callbacks amzguard handles; the ``stage`` label of internal errors."""

    CONNECT = "connect"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    HEADER = "header"
    BODY = "body"
    EOM = "eom"
    ABORT = "abort"


class StoreOperation(StrEnum):
    """What amzguard asked the store; the ``operation`` label of store latency and errors."""

    LOOKUP = "lookup"
    RECORD = "record"
    PURGE = "purge"
    """The hourly purge of old records, on a thread of its own (service.Purger); it changes no message."""


class DecisionStage(StrEnum):
    """Where a recipient decision is taken: at RCPT TO when certain early, at DATA for mail without buyers,
    else at end of message."""

    RCPT = "rcpt"
    DATA = "data"
    """Mail without buyer recipients, accepted at DATA before its headers (``Policy.accepts_at_data``)."""
    EOM = "eom"


class ReloadResult(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _values(*enums: type[StrEnum]) -> Iterator[tuple[str, ...]]:
    """Every combination of the members' values: the complete, fixed label space of one metric."""
    return itertools.product(*([member.value for member in enum] for enum in enums))


@dataclass(frozen=True, slots=True)
class MetricsEndpoint:
    """The running HTTP endpoint (``/metrics``); ``port`` is the bound one, also when 0 was asked for."""

    host: str
    port: int
    server: Any
    thread: threading.Thread

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Metrics:
    """All amzguard metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.messages = Counter(
            "messages",
            "Messages (SMTP transactions) by what the MTA was finally told and the submission path",
            ["result", "path"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.recipients = Counter(
            "recipients",
            "Recipient decisions by outcome, reason and channel; mode=monitor counts would-be decisions",
            ["decision", "reason", "channel", "mode"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.content_findings = Counter(
            "content_findings",
            "Content rule findings in messages a channel granted to a buyer, once per message, by rule and"
            " the rule's action (log: passed; refuse: that buyer refused; remove: header deleted)",
            ["rule", "action"],
            namespace=NAMESPACE,
            registry=registry,
        )
        # issue 12 item 2 (visible To:/Cc: rewrite)
        self.fields_kept = Counter(
            "visible_fields_kept",
            "To:/Cc: fields naming an unmarked recipient's marked address that could not be rewritten safely",
            namespace=NAMESPACE,
            registry=registry,
        )
        # issue 12 item 7 (daily limit): labels are the configured limits.proactive_per_day entries.
        self.limit_tempfailed = Counter(
            "daily_limit_tempfailed",
            "Messages held (451) because a marketplace's daily limit of proactive messages was reached, by"
            " the limits.proactive_per_day entry (a marketplace, or * for those it covers); mode=monitor:"
            " would have been held (accepted and counted)",
            ["marketplace", "mode"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.bad_tokens = Counter(
            "channel_tags_bad_token",
            "Messages carrying a channel tag header whose secret is wrong",
            ["channel"],
            namespace=NAMESPACE,
            registry=registry,
        )
        # Issue 12: how review requests were recognised (bounded: one of RecognisedBy, the strongest way).
        self.review_recognised = Counter(
            "review_recognised",
            "Review-channel recipient decisions by the strongest way the request was recognised (tag, sasl,"
            " client, sender, subject); refused ones (opted out, duplicate, content) too",
            ["by"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.errors = Counter(
            "errors",
            "Internal errors (exceptions) in amzguard by milter stage",
            ["stage"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.decision_seconds = Histogram(
            "decision_duration_seconds",
            "Time amzguard spends deciding and answering at RCPT and at end of message",
            ["stage"],
            namespace=NAMESPACE,
            registry=registry,
            buckets=DECISION_BUCKETS,
        )
        self.store_errors = Counter(
            "store_errors",
            "Failures of the store by what was asked of it and the backend (sqlite, postgresql)",
            ["operation", "backend"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.store_seconds = Histogram(
            "store_duration_seconds",
            "Time one store operation takes (look-up, record, purge), failed ones included, by backend",
            ["operation", "backend"],
            namespace=NAMESPACE,
            registry=registry,
            buckets=STORE_BUCKETS,
        )
        self.connections = Gauge(
            "milter_connections",
            "Milter connections from the MTA currently open",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.reloads = Counter(
            "config_reloads",
            "Configuration reloads (SIGUSR1) by result; a failed reload keeps the running configuration",
            ["result"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.last_reload_successful = Gauge(
            "config_last_reload_successful",
            "1 if the last configuration load or reload succeeded, 0 if it failed",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.last_reload_success = Gauge(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load or reload",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.mode = Gauge(
            "mode",
            "1 for the mode of the running configuration (enforce or monitor), 0 for the other",
            ["mode"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.build_info = Gauge(
            "build_info",
            "Always 1; the labels say which versions run",
            ["version", "python_version", "pymilter_version"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.build_info.labels(__version__, platform.python_version(), _package_version("pymilter")).set(1)
        self._initialise()

    def _initialise(self) -> None:
        """Create every series at 0 (a labelled metric has no series until its labels are first used)."""
        for labels in _values(MessageResult, SubmissionPath):
            self.messages.labels(*labels)
        for (outcome, reason, channel), mode in itertools.product(possible_decisions(), Mode):
            self.recipients.labels(outcome.value, reason.value, channel.value, mode.value)
        for channel in tagged_channels():
            self.bad_tokens.labels(channel.value)
        for by in RecognisedBy:
            self.review_recognised.labels(by.value)
        for rule in ContentRule:
            for action in ContentAction:
                if action is not ContentAction.OFF and (action is not ContentAction.REMOVE or rule in REMOVABLE_RULES):
                    self.content_findings.labels(rule.value, action.value)
        for stage in MilterStage:
            self.errors.labels(stage.value)
        self._decision_series = {stage: self.decision_seconds.labels(stage.value) for stage in DecisionStage}
        self._message_series: dict[tuple[MessageResult, SubmissionPath], Any] = {}
        self._recipient_series: dict[tuple[Outcome, Reason, Channel, Mode], Any] = {}
        for result in ReloadResult:
            self.reloads.labels(result.value)
        for mode in Mode:
            self.mode.labels(mode.value)

    # -- events ------------------------------------------------------------------------------------

    # The per-message series are looked up in dicts of their own: prometheus_client's labels() takes a
    # lock and builds the label tuple each time (3.1 us per count against 1.6 us, measured; about four
    # counts and one timing per message, on libmilter's threads that compete for the GIL).

    def message(self, result: MessageResult, path: SubmissionPath) -> None:
        key = (result, path)
        child = self._message_series.get(key)
        if child is None:
            child = self._message_series[key] = self.messages.labels(result.value, path.value)
        child.inc()

    def recipient(self, decision: Decision, mode: Mode) -> None:
        key = (decision.outcome, decision.reason, decision.channel, mode)
        child = self._recipient_series.get(key)
        if child is None:
            child = self._recipient_series[key] = self.recipients.labels(
                decision.outcome.value, decision.reason.value, decision.channel.value, mode.value
            )
        child.inc()
        if decision.recognised_by:
            self.review_recognised.labels(decision.recognised_by[0].value).inc()

    def content_finding(self, finding: Finding) -> None:
        self.content_findings.labels(finding.rule.value, finding.action.value).inc()

    def field_kept(self, count: int) -> None:
        self.fields_kept.inc(count)

    def daily_limits(self, limits: LimitSettings) -> None:
        """Create the held-message series of the configured limits (at start and after a reload)."""
        for (marketplace, _), mode in itertools.product(limits.per_day, Mode):
            self.limit_tempfailed.labels(marketplace, mode.value)

    def limit_reached(self, entry: str, mode: Mode) -> None:
        """A message over the daily limit of the ``limits.proactive_per_day`` entry ``entry``."""
        self.limit_tempfailed.labels(entry, mode.value).inc()

    def bad_token(self, channel: Channel) -> None:
        self.bad_tokens.labels(channel.value).inc()

    def error(self, stage: MilterStage) -> None:
        self.errors.labels(stage.value).inc()

    def store_backend(self, backend: str) -> None:
        """Create the store series of ``backend`` (``BACKENDS``), the one the running config uses: at start
        and after a reload that changes it. Both backends' from the start would be 44 lines nobody uses."""
        assert backend in BACKENDS, backend
        for operation in StoreOperation:
            self.store_errors.labels(operation.value, backend)
            self.store_seconds.labels(operation.value, backend)

    def store_error(self, operation: StoreOperation, backend: str) -> None:
        self.store_errors.labels(operation.value, backend).inc()

    @contextmanager
    def store_call(self, operation: StoreOperation, backend: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.store_seconds.labels(operation.value, backend).observe(time.perf_counter() - started)

    def watch_register(self, store_of: Callable[[], Store | None],
                       limits_of: Callable[[], LimitSettings] = lambda: NO_LIMITS) -> None:  # fmt: skip
        """Export the opt-out register's size by source (``notice``: learned by ``optout learn``).

        ``optout learn`` runs in a process of its own (a pipe transport, a cron job), so a counter there
        would never reach this endpoint; the store itself is the one place that knows, read per scrape
        from its ``optout_count`` table (three rows, kept by triggers: no count over the register).
        ``store_of`` gives the running config's store, or None when that config does not use one.
        """
        self.registry.register(_RegisterCollector(store_of))
        self.registry.register(_RestrictionCollector(store_of))
        self.registry.register(_DailyCountCollector(store_of, limits_of))

    @contextmanager
    def deciding(self, stage: DecisionStage) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._decision_series[stage].observe(time.perf_counter() - started)

    def connection_opened(self) -> None:
        self.connections.inc()

    def connection_closed(self) -> None:
        self.connections.dec()

    def config_loaded(self, mode: Mode, when: float | None = None) -> None:
        """A configuration was loaded and is now in use (at start-up or by a reload)."""
        self.last_reload_successful.set(1)
        self.last_reload_success.set(time.time() if when is None else when)
        for member in Mode:
            self.mode.labels(member.value).set(1 if member is mode else 0)

    def reload(self, result: ReloadResult, mode: Mode | None = None) -> None:
        self.reloads.labels(result.value).inc()
        if result is ReloadResult.SUCCESS and mode is not None:
            self.config_loaded(mode)
        else:
            self.last_reload_successful.set(0)

    # -- exposition --------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes (what ``/metrics`` returns)."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> MetricsEndpoint:
        """Start the ``/metrics`` HTTP endpoint on a daemon thread; raises OSError if it cannot bind.

        Built from prometheus_client's WSGI app rather than its ``start_http_server``: that returns the
        server and thread only from 0.17 on, Debian 12's 0.16 returns None, and without the server we can
        neither report the port bound for port 0 nor close the endpoint.
        """
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("_MetricsServer", (_ThreadingWSGIServer,), {"address_family": family})
        server = make_server(host, port, make_wsgi_app(self.registry), server_class, handler_class=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever, name="amzguard-metrics", daemon=True)
        thread.start()
        return MetricsEndpoint(host=host, port=server.server_address[1], server=server, thread=thread)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape, none left behind at exit (as prometheus_client's own server)."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """No access-log line on stderr per scrape: stderr is amzguard's log."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class names it so)
        pass


class _RegisterCollector(Collector):
    def __init__(self, store_of: Callable[[], Store | None]) -> None:
        self._store_of = store_of

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            f"{NAMESPACE}_optout_entries",
            "Buyers in the opt-out register by how they came in (notice: learned from Amazon's notices);"
            " NaN while the store cannot be read",
            labels=["source"],
        )
        store = self._store_of()
        counts: dict[str, int] | None = {}
        if store is not None:
            try:
                counts = store.counts_by_source()
            except StoreError:
                counts = None
        for source in SOURCES:
            family.add_metric([source], float("nan") if counts is None else counts.get(source, 0))
        yield family


class _RestrictionCollector(Collector):
    """Amazon's messaging restrictions in force, read from the store per scrape (the ``restriction`` table:
    a few rows by primary key), so every host of a fleet shows one learned on another."""

    def __init__(self, store_of: Callable[[], Store | None]) -> None:
        self._store_of = store_of

    def collect(self) -> Iterator[GaugeMetricFamily]:
        count = GaugeMetricFamily(f"{NAMESPACE}_messaging_restrictions", "Messaging restrictions in force "
                                  "(review requests and critical messages there are refused); NaN while the "
                                  "store cannot be read")  # fmt: skip
        remaining = GaugeMetricFamily(f"{NAMESPACE}_messaging_restriction_seconds_remaining",
                                      "Seconds until the messaging restriction of a marketplace ends (*: all)",
                                      labels=["marketplace"])  # fmt: skip
        store = self._store_of()
        now = time.time()
        try:
            rows = [r for r in store.restrictions() if r.in_force(now)] if store is not None else []
        except StoreError:
            rows = None
        count.add_metric([], float("nan") if rows is None else len(rows))
        for row in rows or ():
            remaining.add_metric([row.marketplace], row.until - now)
        yield count
        yield remaining


class _DailyCountCollector(Collector):
    """Today's (UTC) proactive messages per marketplace, read from the store per scrape (the rows of one
    day in ``proactive_count``), so every host of a fleet shows the shared count; and the configured
    limits, so a dashboard can show the two side by side. Nothing while no limit is configured."""

    def __init__(self, store_of: Callable[[], Store | None], limits_of: Callable[[], LimitSettings]) -> None:
        self._store_of = store_of
        self._limits_of = limits_of

    def collect(self) -> Iterator[GaugeMetricFamily]:
        today = GaugeMetricFamily(f"{NAMESPACE}_proactive_messages_today", "Proactive messages let through "
                                  "today (UTC) per marketplace, counted for the daily limit; NaN while the "
                                  "store cannot be read", labels=["marketplace"])  # fmt: skip
        limit = GaugeMetricFamily(f"{NAMESPACE}_proactive_daily_limit", "limits.proactive_per_day per "
                                  "entry (a marketplace, or * for each one not listed)", labels=["marketplace"])
        limits = self._limits_of()
        store = self._store_of() if limits.enabled else None
        if store is not None:
            try:
                for row in store.daily_counts(store.today()):
                    today.add_metric([row.marketplace], row.count)
            except StoreError:
                today.add_metric([ALL], float("nan"))
        for marketplace, value in limits.per_day:
            limit.add_metric([marketplace], value)
        yield today
        yield limit
