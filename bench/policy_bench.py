"""Micro-benchmark of the policy alone: the pure work amzguard does per message, without libmilter.

One *decision* is what the adapter asks of the pure modules for a one-recipient message: parse the
sender, classify the recipient, the RCPT-time check, and (when that does not refuse already) the
end-of-message decision and plan. The recipients and headers follow the pipeline benchmark's mix
(mostly allowed mail, some buyer mail refused at RCPT, some review requests to marked buyers), with
odd spellings of each kind mixed in (quoted local parts, comments, source routes, upper case, the
percent hack), because parsing is most of the work.

Throughput is measured in a plain loop; p50/p99 per decision in a second loop that reads the clock
around each one (the clock's own cost is printed and not subtracted).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from amzguard.address import classify_recipient, parse_address  # noqa: E402
from amzguard.config import parse_config  # noqa: E402
from amzguard.policy import MessageFacts, Policy, SubmissionPath  # noqa: E402
from bench.traffic import REVIEW_SENDER, REVIEW_TOKEN, SHOP_SENDER, TAG_HEADER, amzguard_sections  # noqa: E402

P99_TARGET_US = 50.0


@dataclass(frozen=True)
class Case:
    kind: str
    sender: str
    recipient: str
    headers: tuple[tuple[str, str], ...]
    """The fields the adapter hands over (only those the policy asked for)."""
    header_counts: dict[str, int]
    """Per lower-case name, how many fields the message has (the adapter counts them all)."""


_COMMON_COUNTS = {
    "received": 1, "from": 1, "to": 1, "subject": 1, "date": 1, "message-id": 1, "mime-version": 1,
    "content-type": 1, "content-transfer-encoding": 1,
}  # fmt: skip

ALLOWED = (
    "<customer{n}@example.com>", "<Customer.{n}@Example.COM>", '<"cust {n}"@example.net>',
    "<cust{n}+order@example.org>", "<@relay.example:cust{n}@example.com>", "<cust{n}@example.com (home)>",
)  # fmt: skip
BUYER = (
    "<{n:x}buyer@marketplace.amazon.de>", "<BLACKLISTED-{n}@amazon.fr>", "<blacklisted-{n}@amazon.fr>",
    "<{n:x}@M.MARKETPLACE.AMAZON.CO.JP.>", "<x{n}%marketplace.amazon.com@shop.test>",
)  # fmt: skip
REVIEW = ("<blacklisted-{n}@amazon.fr>", "<{n:x}buyer@marketplace.amazon.co.uk>")


def make_cases(count: int, seed: int = 5) -> list[Case]:
    """``count`` made-up messages: 70% allowed, 20% buyer mail, 10% review requests, shuffled."""
    rng = random.Random(seed)
    tag = ((TAG_HEADER, f"review {REVIEW_TOKEN}"),)
    review_counts = {**_COMMON_COUNTS, TAG_HEADER.casefold(): 1}
    cases = []
    for n in range(count):
        pick = n % 10
        if pick < 7:
            cases.append(Case("allowed", SHOP_SENDER, rng.choice(ALLOWED).format(n=n), (), _COMMON_COUNTS))
        elif pick < 9:
            cases.append(Case("buyer", SHOP_SENDER, rng.choice(BUYER).format(n=n), (), _COMMON_COUNTS))
        else:
            cases.append(Case("review", REVIEW_SENDER, rng.choice(REVIEW).format(n=n), tag, review_counts))
    rng.shuffle(cases)
    return cases


def bench_policy(approved_senders: bool = False) -> Policy:
    """The policy as the pipeline benchmark configures amzguard (default buyers, review channel on);
    ``approved_senders``: with ``buyers.approved_senders`` listing both senders (issue 12's check)."""
    data: dict[str, object] = {"channels": amzguard_sections()["channels"]}
    if approved_senders:
        data["buyers"] = {"approved_senders": [REVIEW_SENDER, SHOP_SENDER]}
    return Policy.from_settings(parse_config(data).policy)


def with_from(cases: Sequence[Case]) -> list[Case]:
    """The same cases with the From: field the approved-senders check reads (the sender, with a name)."""
    return [dataclasses.replace(case, headers=(*case.headers, ("From", f"Shop <{case.sender}>"))) for case in cases]


def decide_message(policy: Policy, case: Case) -> object:
    """What the adapter's callbacks ask of the pure modules for one message (see module docstring)."""
    settings = policy.settings
    sender = parse_address(f"<{case.sender}>")
    recipient = classify_recipient(case.recipient, settings.buyers)
    early = policy.decide_at_rcpt(sender, recipient, SubmissionPath.SMTP)
    if early is not None:
        return policy.rcpt_reject(recipient)
    facts = MessageFacts(sender=sender, path=SubmissionPath.SMTP, headers=case.headers)
    decisions = (policy.decide(facts, recipient),)
    return policy.plan(facts, decisions, case.header_counts)


@dataclass(frozen=True)
class Timing:
    name: str
    count: int
    per_second: float
    p50_us: float
    p99_us: float
    max_us: float


def measure(name: str, func: Callable[[Case], object], cases: Sequence[Case]) -> Timing:
    for case in cases[: min(len(cases), 2000)]:  # warm caches (e.g. the IDNA/NFKC tables)
        func(case)
    start = time.perf_counter()
    for case in cases:
        func(case)
    elapsed = time.perf_counter() - start
    clock = time.perf_counter_ns
    samples = []
    append = samples.append
    for case in cases:
        t0 = clock()
        func(case)
        append(clock() - t0)
    samples.sort()
    return Timing(
        name=name,
        count=len(cases),
        per_second=len(cases) / elapsed,
        p50_us=samples[len(samples) // 2] / 1000,
        p99_us=samples[min(len(samples) - 1, (len(samples) * 99) // 100)] / 1000,
        max_us=samples[-1] / 1000,
    )


def clock_overhead_us() -> float:
    clock = time.perf_counter_ns
    values = []
    for _ in range(10000):
        t0 = clock()
        values.append(clock() - t0)
    return statistics.median(values) / 1000


def run(count: int) -> list[Timing]:
    policy = bench_policy()
    buyers = policy.settings.buyers
    cases = make_cases(count)
    timings = [
        measure("classify_recipient (mix)", lambda case: classify_recipient(case.recipient, buyers), cases),
        measure("decision per message (mix)", lambda case: decide_message(policy, case), cases),
    ]
    for kind in ("allowed", "buyer", "review"):
        subset = [case for case in cases if case.kind == kind]
        timings.append(measure(f"  only {kind}", lambda case: decide_message(policy, case), subset))
    approved = bench_policy(approved_senders=True)
    reviews = with_from([case for case in cases if case.kind == "review"])
    timings.append(measure("  review, From: read", lambda case: decide_message(policy, case), reviews))
    timings.append(measure("  review, approved senders", lambda case: decide_message(approved, case), reviews))
    return timings


def format_report(timings: list[Timing], overhead_us: float) -> str:
    lines = [
        "policy micro-benchmark (pure modules, one thread, GC on; see bench/policy_bench.py for what one decision is)",
        f"  {'what':<28} {'count':>8} {'per second':>11} {'p50 us':>8} {'p99 us':>8} {'max us':>8}",
    ]
    for t in timings:
        lines.append(
            f"  {t.name:<28} {t.count:>8} {t.per_second:>11.0f} {t.p50_us:>8.1f} {t.p99_us:>8.1f} {t.max_us:>8.0f}"
        )
    decision = next(t for t in timings if t.name.startswith("decision per message"))
    plain, checked = (next(t for t in timings if t.name == f"  review, {n}") for n in ("From: read", "approved senders"))
    lines.append(f"  approved senders on a review request: p50 {checked.p50_us / plain.p50_us:.2f} x without "
                 "(same run, same cases)")
    verdict = "ok" if decision.p99_us <= P99_TARGET_US else "MISSED"
    lines.append(f"  clock read around each call costs ~{overhead_us:.2f} us (included above)")
    lines.append(f"  target: p99 per decision <= {P99_TARGET_US:.0f} us: {decision.p99_us:.1f} us {verdict}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.policy_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000, help="messages per measured loop (default 200000)")
    parser.add_argument("--smoke", action="store_true", help="a short run (checks the bench works)")
    args = parser.parse_args(argv)
    count = 2000 if args.smoke else args.count
    gc.collect()
    if args.smoke:
        print("SMOKE RUN: few decisions; the figures only show that the benchmark works")
    print(format_report(run(count), clock_overhead_us()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
