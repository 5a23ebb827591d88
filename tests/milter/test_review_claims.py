"""The store decides which review request for an order is first, through the milter protocol against the
real milter process. "Another host" is simulated by a prelude that claims the order in the store between
the milter's look-up and its record: exactly the window two hosts race in. Addresses are made up."""

from __future__ import annotations

from pathlib import Path

from miltertest import constants as c

from amzguard.policy import ReviewSent
from amzguard.store import SqliteStore
from tests.support.fake_mta import FakeMta
from tests.support.milter_process import REVIEW_TOKEN, MilterProcess, write_config

TAG = ("X-Amzguard-Channel", f"review {REVIEW_TOKEN}")
BUYER = "<q7x2k9m4p1z8w3v5@marketplace.amazon.de>"
BUYER_KEY = "q7x2k9m4p1z8w3v5@marketplace.amazon.de"
OTHER_HOST_BUYER = "other-host-buyer@marketplace.amazon.de"

# After the look-up answered "no review request yet", another host claims the order.
OTHER_HOST_FIRST = (
    "import amzguard.store.base as base\n"
    "from amzguard.policy import ReviewSent\n"
    "original = base.SqlStore.answer\n"
    "def answer(self, questions, facts):\n"
    "    answered = original(self, questions, facts)\n"
    "    if questions.order_id:\n"
    "        other = type(self)(self.path)\n"
    f"        other.record([ReviewSent(questions.order_id, {OTHER_HOST_BUYER!r})])\n"
    "        other.close()\n"
    "    return answered\n"
    "base.SqlStore.answer = answer\n"
)


def start(tmp_path: Path, name: str, **sections: object) -> MilterProcess:
    socket = f"unix:{tmp_path}/{name}.sock"
    config = write_config(tmp_path / f"{name}.yml", socket, **sections)
    return MilterProcess(config, socket, tmp_path / f"{name}.log", OTHER_HOST_FIRST).start()


def test_a_claim_lost_after_the_lookup_refuses_the_message_as_a_duplicate(tmp_path: Path) -> None:
    store_path = tmp_path / "store.sqlite"
    proc = start(tmp_path, "lost", store={"path": str(store_path)})
    try:
        with FakeMta(proc.socket) as mta:
            _, eom = mta.message("<shop@shop.test>", [BUYER], headers=[TAG, ("Subject", "Order 305-1234567-7654321")])
        assert eom[-1].command == c.SMFIR_REPLYCODE and eom[-1].fields["smtpcode"] == "550", eom
        assert "order 305-1234567-7654321 got its review request through another message first" in proc.wait_log(
            "another message first")
        assert "reason=duplicate-review" in proc.wait_log("decision=refuse")
        # The other host's claim stands; this message recorded nothing.
        assert SqliteStore(store_path).buyer_for_order("305-1234567-7654321") == OTHER_HOST_BUYER
    finally:
        assert proc.stop() == 0


def test_with_one_per_order_off_a_taken_order_is_no_reason_to_refuse(tmp_path: Path) -> None:
    """one_per_order off: the order is not looked up, and the record finds it taken (an earlier request)."""
    store_path = tmp_path / "store.sqlite"
    SqliteStore(store_path).record([ReviewSent("305-7654321-1234567", OTHER_HOST_BUYER)])
    proc = start(tmp_path, "off", store={"path": str(store_path)},
                 channels={"review": {"enabled": True, "token": REVIEW_TOKEN, "one_per_order": False}})  # fmt: skip
    try:
        with FakeMta(proc.socket) as mta:
            _, eom = mta.message("<shop@shop.test>", [BUYER], headers=[TAG, ("Subject", "Order 305-7654321-1234567")])
        assert eom[-1].command == c.SMFIR_ACCEPT, eom
        assert SqliteStore(store_path).buyer_for_order("305-7654321-1234567") == OTHER_HOST_BUYER
        assert "decision=deliver" in proc.wait_log("decision=deliver")
    finally:
        assert proc.stop() == 0
