"""A fleet: two Postfix instances, each with its own amzguard process, sharing one PostgreSQL database (the
session's throwaway cluster), as docs/fleet.md wires an HA pair or a relay pool.

What must hold across hosts: one review request per order even when both hosts get one at the same moment;
an opt-out learned through host A's pipe transport refuses the next review request on host B; a database
that stops mid-run gives store.on_error (tempfail: the client keeps the message, nothing is lost) only to
messages that need the store, and mail flows again after the restart without restarting either milter.
Every address, order id and notice is made up.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from amzguard.config import DEFAULT_REASON_TEXTS
from amzguard.policy import Reason
from amzguard.store import open_location
from tests.e2e.conftest import REVIEW_SENDER, Stack, start_stack, stop_stack
from tests.e2e.harness import SmtpResult, make_message, unique_token
from tests.e2e.test_optout import LEARN_ADDRESS, NOTICES, PIPE_SERVICE, _system_python_can_run_amzguard, subject_of
from tests.support.installed_copy import SYSTEM_PYTHON, install_world_readable
from tests.support.milter_process import REVIEW_TOKEN
from tests.support.postgres import PostgresCluster, wait_until

TAG = ("X-Amzguard-Channel", f"review {REVIEW_TOKEN}")
DUPLICATE_TEXT = DEFAULT_REASON_TEXTS[Reason.DUPLICATE_REVIEW]
OPTED_OUT_TEXT = DEFAULT_REASON_TEXTS[Reason.OPTED_OUT]
ROUNDS = 8
ORDER_SUFFIX = {"a": "1000001", "b": "2000001"}
"""Simultaneous pairs of review requests for one order; each round is one race between the two hosts."""
FLEET_LIMIT = 3


@dataclass
class Fleet:
    a: Stack
    b: Stack
    url: str
    cluster: PostgresCluster


def _learn_config(url: str) -> object:
    def prepare(workdir: Path) -> None:
        # The pipe (user nobody, Debian's python3-psycopg) writes to the same database as both milters.
        (workdir / "learn.yml").write_text(f"store:\n  url: '{url}'\n")
        install_world_readable(workdir / "pipe")

    return prepare


@pytest.fixture(scope="module")
def fleet(pg_cluster: PostgresCluster) -> Iterator[Fleet]:
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import psycopg, psycopg_pool"], capture_output=True)
    if not _system_python_can_run_amzguard() or probe.returncode != 0:
        pytest.fail(f"{SYSTEM_PYTHON} with PyYAML, psycopg and psycopg_pool is needed to run `optout learn` as the "
                    "pipe user (make test installs python3-yaml, python3-psycopg, python3-psycopg-pool)")
    url = pg_cluster.socket_url(pg_cluster.new_database("fleet"))
    store = open_location(url)
    store.migrate()  # amzguard store init, once for the fleet
    store.shutdown()
    channels = {"review": {"enabled": True, "token": REVIEW_TOKEN, "allowed_senders": [REVIEW_SENDER]}}
    # The daily limit only for a marketplace no other test here sends to (test_daily_limit_shared_by_the_fleet).
    limits = {"proactive_per_day": {"com.mx": FLEET_LIMIT}}
    a = start_stack("fleet-a", prepare=_learn_config(url), transport_maps=f"inline:{{ {LEARN_ADDRESS}=amzguard-optout: }}",
                    extra_master_cf=PIPE_SERVICE, channels=channels, store={"url": url}, limits=limits)  # fmt: skip
    try:
        b = start_stack("fleet-b", channels=channels, store={"url": url}, limits=limits)
    except Exception:
        stop_stack(a)
        raise
    yield Fleet(a, b, url, pg_cluster)
    stop_stack(b)
    stop_stack(a)


def review(to: str, subject: str) -> bytes:
    return make_message(REVIEW_SENDER, to, subject, body="How was your order?\n", extra_headers=[TAG])


def unfolded(text: str) -> str:
    return " ".join(text.split())


def test_one_review_request_per_order_across_two_hosts_sent_at_once(fleet: Fleet) -> None:
    buyer = "f1f1f1f1f1f1f1f1@marketplace.amazon.de"
    for round_ in range(ROUNDS):
        order = f"304-55500{round_:02d}-1234567"
        subjects = {host: unique_token(f"race-{host}") + f" order {order}" for host in ("a", "b")}
        results: dict[str, SmtpResult] = {}
        barrier = threading.Barrier(2)

        def send(host: str, stack: Stack) -> None:
            barrier.wait()
            results[host] = stack.postfix.smtp(REVIEW_SENDER, [buyer], review(buyer, subjects[host]))

        threads = [threading.Thread(target=send, args=(h, s)) for h, s in (("a", fleet.a), ("b", fleet.b))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        codes = sorted((results[h].data_reply or (0, ""))[0] for h in ("a", "b"))
        assert codes == [250, 550], (round_, results)
        winner = "a" if results["a"].queued else "b"
        loser = "b" if winner == "a" else "a"
        assert unfolded(results[loser].data_reply[1]) == f"5.7.1 <{buyer}>: {DUPLICATE_TEXT}"  # type: ignore[index]
        stack = fleet.a if winner == "a" else fleet.b
        stack.postfix.sink.wait_for(1, predicate=lambda m, s=subjects[winner]: subject_of(m.message) == s)
    for stack in (fleet.a, fleet.b):
        stack.postfix.wait_queue_empty()
    # Exactly one delivered per order, over both sinks together.
    delivered = [subject_of(m.message) for s in (fleet.a, fleet.b) for m in s.postfix.sink.messages()]
    for round_ in range(ROUNDS):
        assert sum(f"order 304-55500{round_:02d}-1234567" in s for s in delivered) == 1


def test_optout_learned_on_host_a_refuses_the_next_review_request_on_host_b(fleet: Fleet) -> None:
    buyer = "f2f2f2f2f2f2f2f2@marketplace.amazon.com"
    order = "302-1000001-2000001"  # the order the English notice fixture names
    sent = unique_token("review") + f" order {order}"
    assert fleet.a.postfix.smtp(REVIEW_SENDER, [buyer], review(buyer, sent)).queued
    fleet.a.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == sent)
    offset = fleet.a.postfix.log_offset()
    notice = (NOTICES / "en_order_only.eml").read_bytes()
    assert fleet.a.postfix.smtp("seller-notification@amazon.example", [LEARN_ADDRESS], notice).queued
    fleet.a.postfix.wait_log(r"to=<optout@learn\.shop\.test>, relay=amzguard-optout, .*status=sent", after=offset)
    later = fleet.b.postfix.smtp(REVIEW_SENDER, [buyer], review(buyer, unique_token("later") + " 302-7000001-3000001"))
    assert later.data_reply is not None and later.data_reply[0] == 550, later
    assert unfolded(later.data_reply[1]) == f"5.7.1 <{buyer}>: {OPTED_OUT_TEXT}"


def test_restriction_learned_on_host_a_refuses_the_next_review_request_on_host_b(fleet: Fleet) -> None:
    """Issue 12 item 4: an (invented) restriction notice from amazon.de through host A's pipe transport;
    host B refuses the next review request to a de buyer (messaging-restricted)."""
    buyer = "g3g3g3g3g3g3g3g3@marketplace.amazon.de"
    offset = fleet.a.postfix.log_offset()
    notice = (NOTICES / "restriction_de.eml").read_bytes()
    assert fleet.a.postfix.smtp("seller-notification@amazon.de", [LEARN_ADDRESS], notice).queued
    fleet.a.postfix.wait_log(r"to=<optout@learn\.shop\.test>, relay=amzguard-optout, .*status=sent", after=offset)
    store = open_location(fleet.url)
    try:
        later = fleet.b.postfix.smtp(REVIEW_SENDER, [buyer], review(buyer, unique_token("restricted") + " 302-7000002-3000002"))
        assert later.data_reply is not None and later.data_reply[0] == 550, later
        assert unfolded(later.data_reply[1]) == f"5.7.1 <{buyer}>: {DEFAULT_REASON_TEXTS[Reason.MESSAGING_RESTRICTED]}"
    finally:
        store.lift(None)
        store.shutdown()


def test_database_stopped_mid_run(fleet: Fleet) -> None:
    """Down: review requests are tempfailed (store.on_error: tempfail), other mail flows. Back up: review
    requests pass again on both hosts, with the same milter processes."""
    buyer = "f3f3f3f3f3f3f3f3@marketplace.amazon.fr"
    pids = (fleet.a.milter.proc.pid, fleet.b.milter.proc.pid)  # type: ignore[union-attr]
    fleet.cluster.stop("fast")
    try:
        for host, stack in (("a", fleet.a), ("b", fleet.b)):
            down = stack.postfix.smtp(REVIEW_SENDER, [buyer], review(buyer, unique_token("down") + f" 305-8000001-{ORDER_SUFFIX[host]}"))
            assert down.data_reply is not None and down.data_reply[0] == 451, down
            assert "4.7.1 amzguard opt-out store unavailable, try again later" in unfolded(down.data_reply[1])
            stack.milter.wait_log("opt-out store unavailable (lookup)")
            # A message that does not need the store is not held up by it.
            other = unique_token("other")
            plain = make_message(REVIEW_SENDER, "owner@shop.test", other, body="No buyer here.\n")
            assert stack.postfix.smtp(REVIEW_SENDER, ["owner@shop.test"], plain).queued
    finally:
        fleet.cluster.pg_ctl("start")
    for host, stack in (("a", fleet.a), ("b", fleet.b)):
        # The client retries what was tempfailed, as Postfix's smtp(8) would: now it passes.
        subject = unique_token("back") + f" 305-8000001-{ORDER_SUFFIX[host]}"
        results: list[SmtpResult] = []

        def accepted(stack: Stack = stack, subject: str = subject) -> bool:
            results.append(stack.postfix.smtp(REVIEW_SENDER, [buyer], review(buyer, subject)))
            return results[-1].data_reply is not None and results[-1].data_reply[0] != 451

        assert wait_until(accepted, timeout=60, interval=0.5), results[-1]
        assert results[-1].queued, results[-1]
        stack.postfix.sink.wait_for(1, predicate=lambda m, s=subject: subject_of(m.message) == s)
    assert (fleet.a.milter.proc.pid, fleet.b.milter.proc.pid) == pids  # type: ignore[union-attr]
    assert fleet.a.milter.proc.poll() is None and fleet.b.milter.proc.poll() is None  # type: ignore[union-attr]
    # Both orders are recorded once in the shared database.
    store = open_location(fleet.url)
    try:
        orders = [f"305-8000001-{suffix}" for suffix in ORDER_SUFFIX.values()]
        assert store.reviewed_orders(orders) == set(orders)
        assert {store.buyer_for_order(order) for order in orders} == {buyer}
    finally:
        store.shutdown()


def test_daily_limit_shared_by_the_fleet(fleet: Fleet) -> None:
    """Six review requests to com.mx buyers (limit 3), three through each host, all at once: the hosts share
    one count, so exactly as many get 250 as the database counted, never more than the limit a day."""
    results: dict[int, SmtpResult] = {}
    barrier = threading.Barrier(6)

    def send(n: int) -> None:
        stack = fleet.a if n % 2 else fleet.b
        buyer = f"mx{n:02d}k2m9q4p1z8w3@marketplace.amazon.com.mx"
        barrier.wait()
        results[n] = stack.postfix.smtp(REVIEW_SENDER, [buyer], review(buyer, f"order 304-77700{n:02d}-1234567"))

    threads = [threading.Thread(target=send, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    codes = [(results[n].data_reply or (0, ""))[0] for n in range(6)]
    assert sorted(set(codes)) == [250, 451], results
    store = open_location(fleet.url)
    try:
        counts = [c for c in store.daily_counts() if c.marketplace == "com.mx"]
    finally:
        store.shutdown()
    # One UTC day (two only if the test ran across midnight): exactly the limit went out, the rest waits.
    assert all(c.count <= FLEET_LIMIT for c in counts) and codes.count(250) == sum(c.count for c in counts)
    assert codes.count(250) >= FLEET_LIMIT  # with one day: exactly the limit
    assert all(results[n].data_reply[1].startswith("4.7.1 daily limit of 3 proactive messages to Amazon "  # type: ignore[index]
                                                   "marketplace com.mx reached") for n in range(6) if codes[n] == 451)
