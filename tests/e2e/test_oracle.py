"""The oracle test on Postfix: the real Postfix decides where each spelling goes, amzguard must agree.

Two Postfix instances with the same main.cf: one without a milter or amzguard's transport map (the oracle),
one with amzguard enforcing (the shipped transport map, the review channel on, every channel limited to the
review mailer's sender).
Both have Debian's local destinations (``$myhostname``, ``localhost``; ``[127.0.0.1]`` is local through
``inet_interfaces``), so routing forms through them are unwrapped by Postfix. See tests/e2e/oracle.py for
the rules and docs/testing-oracle.md for the sizes.

``make test`` runs ORACLE_CASES (default 150) derandomised hypothesis cases per path; with ORACLE_SEED set
the cases come from the seeded generator instead (``make soak`` runs 5000 that way).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import REVIEW_SENDER_CHANNELS, Stack, start_stack, stop_stack
from tests.e2e.harness import KEEP_ENV, PostfixInstance, make_workdir
from tests.e2e.oracle import (
    OPTED_OUT,
    POOL,
    assert_no_leak,
    fixed_plans,
    planned,
    PostfixTarget,
    register_opt_outs,
)
from tests.support.spellings import Context, Mailbox

CONTEXT = Context(local_hosts=("shop.test", "localhost", "mx.shop.test", "[127.0.0.1]"))
MAIN_CF = {"mydestination": "$myhostname, localhost.$mydomain, localhost"}
"""Debian's default local destinations ($myhostname is mx.shop.test in the harness)."""
LOCAL_SERVICE = "local     unix  -       n       n       -       -       local\n"

_X = Mailbox("x", "marketplace.amazon.de", buyer=True, marked=False)
_Q7X = Mailbox("q7x2k9m4p1z8w3v5", "marketplace.amazon.de", buyer=True, marked=False)
ISSUE_9 = fixed_plans([
    # 1: whole-address quoting and an escaped @; a marked, opted-out buyer quoted whole
    ('"q7x2k9m4p1z8w3v5@marketplace.amazon.de"', _Q7X, "shop", "issue9-1-quote-whole"),
    ("q7x2k9m4p1z8w3v5\\@marketplace.amazon.de", _Q7X, "untagged", "issue9-1-escaped-at"),
    ('"blacklisted-77001@amazon.de"', OPTED_OUT[1], "opted-out", "issue9-1-quoted-marked-opted-out"),
    # 2: routing forms nested deeper than one level, through the host's own names
    ("x@marketplace.amazon.de@[127.0.0.1]", _X, "shop", "issue9-2-at-literal"),
    ("x%marketplace.amazon.de%localhost@localhost", _X, "untagged", "issue9-2-percent-twice"),
    ("localhost!marketplace.amazon.de!x@mx.shop.test", _X, "shop", "issue9-2-bang-twice"),
    # 3: mixed messages whose buyer Postfix rewrote before the milter saw it
    ("q7x2k9m4p1z8w3v5@marketplace.amazon.de.", _Q7X, "untagged", "issue9-3-trailing-dot"),
    ("@a.example:q7x2k9m4p1z8w3v5@marketplace.amazon.de", _Q7X, "untagged", "issue9-3-source-route"),
    # 4: tagged requests refused as a whole (opted out): the bounce must not carry the secret
    (OPTED_OUT[0].address, OPTED_OUT[0], "opted-out", "issue9-4-opted-out"),
    # granted requests to a marked buyer that Postfix rewrites: exactly one copy, unmarked (found by the
    # seeded long run: the marked copy survived the delete)
    ("@a.example:blacklisted-20@amazon.fr", POOL[1], "review", "granted-source-route"),
    ("@localhost:blacklisted-20@AMAZON.FR.", POOL[1], "review", "granted-source-route-dot"),
])


@dataclass
class Pair:
    oracle: PostfixTarget
    subject: PostfixTarget
    stack: Stack


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    workdir = make_workdir("amzguard-oracle-")
    # Nothing of amzguard's in the oracle, not even its transport map (which refuses marked addresses
    # itself): it shows where Postfix alone routes a spelling.
    oracle = PostfixInstance(workdir, extra_main_cf=MAIN_CF, extra_master_cf=LOCAL_SERVICE)
    oracle.start()
    try:
        stack = start_stack("oracle", channels=REVIEW_SENDER_CHANNELS, main_cf=MAIN_CF,
                            extra_master_cf=LOCAL_SERVICE)  # fmt: skip
    except Exception:
        oracle.stop()
        raise
    try:
        register_opt_outs(stack.workdir / "amzguard.yml")
        yield Pair(PostfixTarget("postfix alone", oracle), PostfixTarget("postfix+amzguard", stack.postfix), stack)
    finally:
        if os.environ.get(KEEP_ENV) == "1":  # the milter's decision lines, for reading a failure
            shutil.copy(stack.milter.log, workdir.with_name(workdir.name + "-amzguard.log"))
        try:
            stop_stack(stack)
        finally:
            oracle.stop()
            shutil.rmtree(workdir, ignore_errors=True)



@pytest.mark.parametrize("path", ["smtp", "sendmail", "sendmail-t"])
def test_postfix_routes_no_ungranted_mail_to_a_buyer(pair: Pair, path: str) -> None:
    assert_no_leak(f"postfix {path}", pair.oracle, pair.subject, path, planned(CONTEXT, ISSUE_9), [pair.stack.milter])

