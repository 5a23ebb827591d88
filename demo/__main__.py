"""``python -m demo`` (what ``make demo`` runs): a throwaway Postfix with amzguard, and the story of what it decided.

Starts, in one directory under /tmp on loopback ports, a Postfix wired to amzguard (both submission paths, the
shipped transport map, a review secret made for the run, a pipe to ``amzguard optout learn``) and smtp-sink for
outside mail; sends the story (demo/story.py) through it, each step by the path a shop would use; prints per step
what was sent, amzguard's decision lines, Postfix's log lines and what arrived where; then a summary table and
amzguard's metrics. Exit status 0 when every step went as the story promises, 1 when one differed, 2 when the
machine lacks something. ``--keep`` (``make demo KEEP=1``) keeps everything running for own messages until
Ctrl-C or SIGTERM. Either way, everything started is stopped by PID and the directory removed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from demo import report
from demo.observe import Observer, Seen, mismatches
from demo.stack import DemoSetupError, DemoStack, check_machine, start_stack
from demo.story import STORY, Step


class Stopped(Exception):
    """SIGTERM or SIGHUP arrived: unwind to the clean-up like Ctrl-C does."""


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


def _write_json(path: Path, data: dict[str, object]) -> None:
    """Written whole or not at all (a test polls for it while the demo keeps running)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)


def _tell(stack: DemoStack, story: Sequence[Step]) -> list[tuple[Step, Seen, list[str]]]:
    observer = Observer(stack)
    rows = []
    for number, step in enumerate(story, 1):
        seen = observer.run(step)
        problems = mismatches(step.expect, seen)
        report.block(number, len(story), step, seen, problems)
        rows.append((step, seen, problems))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep everything running afterwards (Ctrl-C stops)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write what was seen, step by step, to FILE")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the summary as Markdown to FILE")
    args = parser.parse_args(argv)
    try:
        check_machine()
    except DemoSetupError as exc:
        print(f"make demo: {exc}", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)
    # Ctrl-C must stop it even when started from a shell that left SIGINT ignored (a `&` job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    began = time.monotonic()
    try:
        stack = start_stack()  # on any failure it has stopped what it started and removed its directory
    except (KeyboardInterrupt, Stopped):
        print("make demo: interrupted while starting; nothing left running", file=sys.stderr)
        return 130
    except (OSError, RuntimeError) as exc:  # PostfixStartError, a milter that did not start, a missing tool
        print(f"make demo: could not start the demo's mail server: {exc}", file=sys.stderr)
        return 2
    status = 0
    try:
        report.header(stack)
        started = time.monotonic()
        rows = _tell(stack, STORY)
        told = time.monotonic()
        report.summary(rows)
        url = stack.milter.metrics_url()
        samples = stack.milter.scrape()
        report.metrics(samples, url)
        status = 1 if any(problems for _, _, problems in rows) else 0
        if args.markdown:
            args.markdown.write_text(report.summary_markdown(rows))
        commands = report.keep_commands(stack)
        if args.json:
            _write_json(args.json, {
                "workdir": str(stack.workdir), "config": str(stack.config), "smtp_port": stack.postfix.smtp_port,
                "pids": stack.pids(), "metrics_url": url, "keep": args.keep, "keep_commands": commands,
                "seconds": {"setup": round(started - began, 2), "story": round(told - started, 2)},
                "steps": [{"key": step.key, "title": step.title, "via": step.via.value, "subject": step.subject,
                           "mismatches": problems, "seen": seen.as_json()} for step, seen, problems in rows],
                "metrics": [{"name": name, "labels": dict(labels), "value": value}
                            for (name, labels), value in samples.items()],
            })  # fmt: skip
        report.out(f"Setup {started - began:.1f} s, story {told - started:.1f} s.")
        if args.keep:
            report.keep_hint(stack, url, commands, os.getpid())
            while True:
                signal.pause()
        else:
            report.out("`make demo KEEP=1` keeps it running afterwards, with swaks/sendmail lines to send your own.")
    except report.OutputClosed:
        status = status or 141  # as a shell reports SIGPIPE
    except (KeyboardInterrupt, Stopped) as exc:
        report.out(f"\nstopping ({str(exc) or 'SIGINT'})")
        status = status or (0 if args.keep else 130)
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        pids = stack.pids()
        stack.stop()
        report.out(f"Stopped {', '.join(f'{name} (PID {pid})' for name, pid in pids.items() if pid)}; "
                   f"removed {stack.workdir}.")  # fmt: skip
    return status


if __name__ == "__main__":
    sys.exit(main())
