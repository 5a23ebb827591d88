"""Fixtures: a real Postfix wired to a real amzguard process, per test module."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import BounceReport, PostfixInstance, make_workdir, parse_bounce
from tests.support.milter_process import REVIEW_TOKEN, MilterProcess, write_config

REPO = Path(__file__).resolve().parents[2]
TRANSPORT_MAP = REPO / "etc" / "postfix" / "amzguard-transport.regexp"

REVIEW_SENDER = "support@shop.test"  # the shop's review mailer; a local mailbox, so its bounces are seen
SHOP_SENDER = "shop@shop.test"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The oracle test's one line per run (cases per path, what it found), pass or fail."""
    from tests.e2e.oracle import SUMMARIES

    for line in SUMMARIES:
        terminalreporter.write_line(line)


@dataclass
class Stack:
    """Postfix plus amzguard, as an admin would wire them (shipped transport map included)."""

    postfix: PostfixInstance
    milter: MilterProcess
    workdir: Path

    def restart_milter(self) -> None:
        self.milter.stop()
        self.milter.start()


def subject_of(message) -> str:
    return str(message.get("Subject", ""))


def bounces_about(stack: Stack, user: str, subject: str, count: int = 1) -> list[BounceReport]:
    """The DSNs in ``user``'s mailbox whose returned message had ``subject`` (waits for ``count``)."""

    def is_ours(message) -> bool:
        if message.get_content_type() != "multipart/report":
            return False
        returned = parse_bounce(message).returned
        return returned is not None and subject_of(returned) == subject

    return [parse_bounce(m) for m in stack.postfix.wait_mailbox(user, count, predicate=is_ours)]


def start_stack(
    name: str,
    *,
    prepare: Callable[[Path], None] | None = None,
    transport_maps: str = "",
    extra_master_cf: str = "",
    main_cf: dict[str, str] | None = None,
    milter_class: type[MilterProcess] = MilterProcess,
    **sections: object,
) -> Stack:
    """``sections`` go into the amzguard config; ``prepare(workdir)`` runs before anything starts;
    ``milter_class`` runs the milter (tests/support/faketime.py: with a clock the test moves);
    ``transport_maps`` are listed after the shipped map; ``extra_master_cf`` adds Postfix services
    (``{workdir}`` in it is replaced by the stack's directory); ``main_cf`` overrides main.cf settings."""
    workdir = make_workdir(f"amzguard-{name}-")
    if prepare is not None:
        prepare(workdir)
    socket_path = workdir / "amzguard.sock"
    socket = f"unix:{socket_path}"
    config = write_config(workdir / "amzguard.yml", socket, **sections)
    milter = milter_class(config, socket, workdir / "amzguard.log", group="postfix").start()
    (workdir / "postfix").mkdir(mode=0o755)
    maps = ", ".join(filter(None, [f"regexp:{TRANSPORT_MAP}", transport_maps]))
    postfix = PostfixInstance(workdir / "postfix", milter=socket, transport_maps=maps, extra_main_cf=main_cf,
                              extra_master_cf=extra_master_cf.replace("{workdir}", str(workdir)))  # fmt: skip
    try:
        postfix.start()
    except Exception:
        milter.stop()
        raise
    return Stack(postfix=postfix, milter=milter, workdir=workdir)


def stop_stack(stack: Stack) -> None:
    try:
        stack.postfix.stop()
    finally:
        stack.milter.stop()
        shutil.rmtree(stack.workdir, ignore_errors=True)


_ONLY_REVIEW_SENDER = {"allowed_senders": [REVIEW_SENDER]}
REVIEW_SENDER_CHANNELS = {
    "review": {"enabled": True, "token": REVIEW_TOKEN, **_ONLY_REVIEW_SENDER},
    "reply": _ONLY_REVIEW_SENDER,
    "critical": _ONLY_REVIEW_SENDER,
}
"""Every channel restricted to the review mailer's sender address, so mail from other senders to a buyer
is refused already at RCPT on the SMTP path; review channel on; everything else default."""


@pytest.fixture()
def fresh_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A stack of its own for one test (counters, memory and the queue start from nothing), configured
    like ``stack``."""
    started = start_stack(request.node.name[:20], channels=REVIEW_SENDER_CHANNELS)
    yield started
    stop_stack(started)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    started = start_stack("e2e", channels=REVIEW_SENDER_CHANNELS)
    yield started
    stop_stack(started)
