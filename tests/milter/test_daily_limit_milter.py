"""The daily limit through the milter protocol against the real milter process: the 451 at end of
message, that nothing is recorded for a held message, and monitor mode. Addresses and orders are made up."""

from __future__ import annotations

from pathlib import Path

from miltertest import constants as c

from amzguard.policy import ProactiveSent, utc_day
from amzguard.store import DailyCount, SqliteStore
from tests.support.fake_mta import FakeMta
from tests.support.milter_process import REVIEW_TOKEN, MilterProcess, write_config

TAG = ("X-Amzguard-Channel", f"review {REVIEW_TOKEN}")
BUYER = "<q7x2k9m4p1z8w3v5@marketplace.amazon.de>"
ORDER = "305-2345678-8765432"


def start(tmp_path: Path, name: str, **sections: object) -> tuple[MilterProcess, SqliteStore]:
    socket = f"unix:{tmp_path}/{name}.sock"
    store_path = tmp_path / f"{name}.sqlite"
    config = write_config(tmp_path / f"{name}.yml", socket, store={"path": str(store_path)},
                          limits={"proactive_per_day": {"de": 1}}, **sections)  # fmt: skip
    store = SqliteStore(store_path)
    store.record([ProactiveSent("de", 1, None)])  # today's one message went out already
    return MilterProcess(config, socket, tmp_path / f"{name}.log").start(), store


def send(proc: MilterProcess, subject: str, *rcpts: str, tagged: bool = True,
         extra: tuple[tuple[str, str], ...] = ()) -> list:  # type: ignore[type-arg]  # fmt: skip
    headers = [*([TAG] if tagged else []), ("Subject", subject), *extra]
    with FakeMta(proc.socket) as mta:
        _, eom = mta.message("<support@shop.test>", list(rcpts), headers=headers)
    return eom


def test_over_the_limit_is_451_and_records_nothing(tmp_path: Path) -> None:
    proc, store = start(tmp_path, "enforce")
    try:
        eom = send(proc, f"Order {ORDER}", BUYER, "<owner@shop.test>")
        reply = eom[-1]
        assert reply.command == c.SMFIR_REPLYCODE and reply.code == "451", eom
        assert reply.fields["text"].startswith("4.7.1 daily limit of 1 proactive messages to Amazon "
                                               "marketplace de reached (1 today, UTC)")  # fmt: skip
        assert not [r for r in eom if r.command in (c.SMFIR_ADDRCPT, c.SMFIR_DELRCPT)]  # nothing else done
        log = proc.wait_log("daily limit reached")
        assert f"4XTESTQ1D: daily limit reached: marketplace=de day={store.today()} count=1 adding=1 limit=1" in log
        assert "decision=" not in log  # no recipient decided: the whole message waits
        assert store.reviewed_orders([ORDER]) == frozenset()
        assert store.daily_counts() == [DailyCount("de", store.today(), 1)]
        # A reply to the same buyer passes and counts nothing.
        reply_eom = send(proc, "Re: your question", BUYER, tagged=False,
                         extra=(("In-Reply-To", "<0100018c.77ab@marketplace.amazon.de>"),))  # fmt: skip
        assert reply_eom[-1].command == c.SMFIR_ACCEPT, reply_eom
        assert "channel=reply decision=deliver" in proc.wait_log("channel=reply")
        assert proc.metric("amzguard_daily_limit_tempfailed_total", marketplace="de", mode="enforce") == 1
        assert proc.metric("amzguard_proactive_messages_today", marketplace="de") == 1
        # Counted apart from faults' tempfails (whose alert must not fire while a limit works as configured).
        assert proc.metric("amzguard_messages_total", result="held", path="smtp") == 1
        assert proc.metric("amzguard_messages_total", result="tempfailed", path="smtp") == 0
    finally:
        assert proc.stop() == 0


def test_monitor_mode_logs_would_tempfail_accepts_and_counts(tmp_path: Path) -> None:
    proc, store = start(tmp_path, "monitor", mode="monitor")
    try:
        eom = send(proc, f"Order {ORDER}", BUYER)
        assert eom[-1].command == c.SMFIR_ACCEPT, eom
        assert "would tempfail (monitor mode: accepted and counted)" in proc.wait_log("would tempfail")
        assert store.reviewed_orders([ORDER]) == {ORDER}
        assert store.daily_counts() == [DailyCount("de", utc_day(store.clock()), 2)]
        assert proc.metric("amzguard_daily_limit_tempfailed_total", marketplace="de", mode="monitor") == 1
        assert proc.metric("amzguard_daily_limit_tempfailed_total", marketplace="de", mode="enforce") == 0
    finally:
        assert proc.stop() == 0
