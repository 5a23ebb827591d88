"""Micro-benchmark of the content rules alone: the pure work per message a channel grants to a buyer.

One *judgement* is what the milter does for such a message at end of message: scan the body (the MTA's
64 KiB chunks through ``BodyScanner``) and run every active rule (``judge_content``). Measured per template
with the shipped defaults and with every rule off (then nothing is read: ``needs_body`` is false), on
the bench's review request (the pipeline's ``review-html`` template), the made-up fixtures of the unit
tests (plain, HTML, base64, a marketing template) and a review request with a 5 MB PDF attached (its
bytes are counted, not kept).
"""

from __future__ import annotations

import argparse
import base64
import gc
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from amzguard.content import ContentAction, ContentRule, ContentSettings, judge_message  # noqa: E402
from bench import traffic  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "content"


def templates() -> dict[str, bytes]:
    review = traffic.message_text(traffic.REVIEW_MIX[-1]).replace("\n", "\r\n").encode()
    pdf = base64.encodebytes(b"%PDF-1.4\n" + bytes(5_000_000)).decode().replace("\n", "\r\n")
    with_pdf = (
        b"From: shop@shop.test\r\nTo: x@marketplace.amazon.de\r\nSubject: Invoice 302-0000000-0000000\r\n"
        b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n--m\r\nContent-Type: text/plain\r\n\r\n'
        b"Your invoice for order 302-0000000-0000000 is attached.\r\n--m\r\nContent-Type: application/pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=invoice.pdf\r\n\r\n"
        + pdf.encode() + b"--m--\r\n"
    )
    return {
        "bench review-html (1.4 KB)": review,
        "en_plain_review.eml": (FIXTURES / "en_plain_review.eml").read_bytes(),
        "de_review_multipart.eml": (FIXTURES / "de_review_multipart.eml").read_bytes(),
        "fr_review_base64.eml": (FIXTURES / "fr_review_base64.eml").read_bytes(),
        "en_marketing.eml": (FIXTURES / "en_marketing.eml").read_bytes(),
        "5 MB PDF attached": with_pdf,
    }


def per_message_us(raw: bytes, settings: ContentSettings, count: int) -> float:
    judge_message(raw, settings, True)  # warm the phrase patterns
    times = []
    for _ in range(3):
        start = time.thread_time()
        for _ in range(count):
            judge_message(raw, settings, True)
        times.append((time.thread_time() - start) / count)
    return statistics.median(times) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.content_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="judgements per measured loop (default 500)")
    parser.add_argument("--smoke", action="store_true", help="a short run (checks the bench works)")
    args = parser.parse_args(argv)
    count = 5 if args.smoke else args.count
    on = ContentSettings()
    off = ContentSettings(actions=tuple((rule, ContentAction.OFF) for rule in ContentRule))
    gc.collect()
    if args.smoke:
        print("SMOKE RUN: few judgements; the figures only show that the benchmark works")
    print("content rules micro-benchmark (pure: scan + rules per granted message; CPU time of one thread, median of 3)")
    print(f"  {'template':<28} {'size KB':>8} {'rules on us':>12} {'rules off us':>13} {'findings':>9}")
    for name, raw in templates().items():
        loops = max(1, count // 50) if len(raw) > 1_000_000 else count
        found = len(judge_message(raw, on, True).findings)
        print(
            f"  {name:<28} {len(raw) / 1024:>8.1f} {per_message_us(raw, on, loops):>12.1f}"
            f" {per_message_us(raw, off, loops):>13.1f} {found:>9}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
