"""Soak: a bounded run of mixed mail through Postfix with the milter; its memory and descriptors must not grow.

The CI run is short (SOAK_MESSAGES, default 2000 at 20 sessions); `make soak` runs the long one (10,000).
"""

from __future__ import annotations

import json
import os
import smtplib
import threading
import time
from collections import Counter
from pathlib import Path


from tests.e2e.conftest import REVIEW_SENDER, SHOP_SENDER, Stack
from tests.support.milter_process import REVIEW_TOKEN

MESSAGES = int(os.environ.get("SOAK_MESSAGES", "2000"))
SESSIONS = int(os.environ.get("SOAK_SESSIONS", "20"))
WARMUP = 300
RSS_GROWTH_LIMIT_KB = 8 * 1024
"""Python's allocator keeps freed arenas; a leak of even 1 KB per message would exceed this at 10,000."""
PER_CONNECTION = 10
"""Messages per SMTP session: Postfix opens one milter connection per session, so the run makes
MESSAGES / PER_CONNECTION milter connections and a leak per connection cannot hide."""
FD_GROWTH_LIMIT = SESSIONS
"""SQLite defers closing a connection's file while another connection of the process holds a lock on it,
so the count moves with concurrency (at most about one per session), never with the number of messages."""

# (share in 100, sender, recipients, extra header, expected outcome): mostly allowed mail, some refused,
# some review requests
MIX = [
    (70, SHOP_SENDER, ["partner@example.org"], None, "queued"),
    (15, SHOP_SENDER, ["blacklisted-30117@amazon.de"], None, "rcpt-refused"),
    (10, REVIEW_SENDER, ["z8y7x6w5v4u3t2s1@marketplace.amazon.fr"], None, "data-550"),
    (5, REVIEW_SENDER, ["blacklisted-30118@amazon.de"], f"X-Amzguard-Channel: review {REVIEW_TOKEN}", "queued"),
]
PLAN = [entry for share, *entry in MIX for _ in range(share)]


def process_sample(pid: int) -> tuple[int, int]:
    """(resident set in kB, open file descriptors) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(status.split("VmRSS:")[1].split()[0])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def run_sessions(port: int, total: int, outcome: Counter) -> None:
    lock = threading.Lock()
    counter = iter(range(total))

    def send(client: smtplib.SMTP, index: int) -> str:
        sender, rcpts, header, _ = PLAN[index % len(PLAN)]
        body = (f"From: <{sender}>\r\nTo: <{rcpts[0]}>\r\nSubject: soak {index}\r\n"
                + (f"{header}\r\n" if header else "") + "\r\n" + "x" * 900 + "\r\n")  # fmt: skip
        code, _ = client.mail(sender)
        accepted = [r for r in rcpts if client.rcpt(r)[0] == 250] if code == 250 else []
        if not accepted:
            client.rset()
            return "rcpt-refused"
        # smtplib raises only when DATA itself is refused; the end-of-data reply is returned.
        try:
            code, _ = client.data(body)
        except smtplib.SMTPDataError as exc:
            code = exc.smtp_code
        if code != 250:
            client.rset()
        return "queued" if code == 250 else f"data-{code}"

    def session() -> None:
        done = False
        while not done:
            client = smtplib.SMTP("127.0.0.1", port, timeout=60)
            client.ehlo("soak.test")
            try:
                for _ in range(PER_CONNECTION):
                    index = next(counter, None)
                    if index is None:
                        done = True
                        break
                    result = send(client, index)
                    with lock:
                        outcome[result] += 1
            finally:
                client.quit()

    threads = [threading.Thread(target=session) for _ in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)


def test_soak_memory_and_descriptors_stay_flat(fresh_stack: Stack) -> None:
    stack = fresh_stack
    pid = stack.milter.pid
    assert pid is not None
    warmup = Counter()
    run_sessions(stack.postfix.smtp_port, WARMUP, warmup)
    stack.postfix.wait_queue_empty(timeout=120)
    before = process_sample(pid)
    outcome = Counter()
    started = time.monotonic()
    run_sessions(stack.postfix.smtp_port, MESSAGES, outcome)
    elapsed = time.monotonic() - started
    stack.postfix.wait_queue_empty(timeout=300)
    time.sleep(1)  # let libmilter close the last sessions
    after = process_sample(pid)
    report = {
        "messages": MESSAGES, "sessions": SESSIONS, "seconds": round(elapsed, 1),
        "rss_kb_before": before[0], "rss_kb_after": after[0], "fds_before": before[1], "fds_after": after[1],
        **outcome,
    }  # fmt: skip
    print("soak report:", json.dumps(report))
    assert outcome == Counter(PLAN[i % len(PLAN)][3] for i in range(MESSAGES))
    assert after[1] <= before[1] + FD_GROWTH_LIMIT, report
    assert after[0] - before[0] < RSS_GROWTH_LIMIT_KB, report
    assert stack.milter.alive()
