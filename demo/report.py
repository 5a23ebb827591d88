"""How the demo prints: one block per step, a one-screen summary table, the metrics, the KEEP hint."""

from __future__ import annotations

import os
import shlex
import sys
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from demo.observe import SENDMAIL_ARGS, Seen
from demo.stack import DemoStack
from demo.story import SHOP, TAG_HEADER, Outcome, Step, Via

WIDTH = 120
LABEL = 10
INDENT = " " * (LABEL + 1)
SHOWN_METRICS = (
    "amzguard_messages_total",
    "amzguard_recipients_total",
    "amzguard_channel_tags_bad_token_total",
    "amzguard_errors_total",
    "amzguard_store_errors_total",
    "amzguard_decision_duration_seconds_count",
    "amzguard_optout_entries",
)
"""The counters that tell the story; all other series (buckets, build info, reload times) are left out."""


class OutputClosed(Exception):
    """Standard output went away (``python -m demo | head``): stop and clean up like Ctrl-C."""


def out(text: str = "") -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # What is still printed during the clean-up goes nowhere instead of failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise OutputClosed() from None


def _field(label: str, lines: Iterable[str]) -> None:
    """``label`` then each line, wrapped under the first one's indentation."""
    first = True
    for line in lines:
        wrapped = textwrap.wrap(line, WIDTH - LABEL - 1, break_long_words=False, break_on_hyphens=False,
                                subsequent_indent="  ") or [""]  # fmt: skip
        for part in wrapped:
            out(f"{label if first else '':<{LABEL}} {part}")
            first = False
    if first:
        out(f"{label:<{LABEL}} -")


def header(stack: DemoStack) -> None:
    postfix = stack.postfix
    out(f"amzguard demo: a throwaway Postfix wired to amzguard, all in {stack.workdir}")
    out(f"  Postfix: smtpd on 127.0.0.1:{postfix.smtp_port}, smtpd_milters and non_smtpd_milters = amzguard's socket,")
    out("  transport_maps = the shipped etc/postfix/amzguard-transport.regexp plus a pipe to `amzguard optout learn`,")
    sink = f"smtp-sink on 127.0.0.1:{postfix.sink.port}"
    out(f"  local mailboxes for shop.test, the rest relayed to {sink} (the internet).")
    out("  amzguard runs on the shipped etc/amzguard.yml, changed only in: milter.socket, store.path, metrics.listen,")
    out("  channels.review (enabled, with a secret made for this run). Addresses in its log are masked, as shipped.")
    out()


def _sent(step: Step) -> list[str]:
    if step.via is Via.SMTP:
        path = "SMTP to smtpd (smtpd_milters)"
    else:
        path = f"sendmail {' '.join(SENDMAIL_ARGS)} -f {step.sender}, as PHP mail() runs it (non_smtpd_milters)"
    lines = [f"{path}", f"from <{step.sender}> to <{'>, <'.join(step.to)}>", f"Subject: {step.subject}"]
    for name, value in step.headers:
        lines.append(f"{name}: {value.replace('{secret}', '<the demo secret>')}")
    return lines


def block(number: int, total: int, step: Step, seen: Seen, problems: list[str]) -> None:
    out(f"── {number}/{total}  {step.title} ".ljust(WIDTH, "─"))
    out(f"{'':<{LABEL}} {step.why}")
    _field("sent", _sent(step))
    _field("reply" if step.via is Via.SMTP else "returned", seen.replies)
    _field("amzguard", seen.amzguard_lines)
    _field("postfix", seen.postfix_lines)
    arrived: list[str] = []
    bounces = iter(seen.bounces)  # arrivals name the bounces in the order they were read
    for line in seen.arrivals:
        arrived.append(line)
        if "a bounce" in line:
            for recipient in next(bounces).recipients:
                arrived.extend(f"  {k}: {v}" for k, v in recipient.items())
    _field("arrived", arrived or ["nothing: no copy in the sink or in any mailbox"])
    if any(line.startswith("Postfix pipe") for line in seen.arrivals):
        _field("register", seen.register or ["(empty)"])
    _field("verdict", ["as the story promises"] if not problems else [f"DIFFERS: {p}" for p in problems])
    out()


def _decided(decisions: Iterable[str]) -> str:
    parts = []
    for item in decisions:
        fields = dict(part.split("=", 1) for part in item.split())
        channel, decision, reason = fields.get("channel", "?"), fields.get("decision", "?"), fields.get("reason", "?")
        if reason == "channel":
            parts.append(f"{decision} ({channel})")
        elif channel != "none":
            parts.append(f"{decision} {reason} ({channel})")
        else:
            parts.append(f"{decision} {reason}")
    return ", ".join(parts) or "-"


def _result(outcome: Outcome) -> str:
    parts = []
    for item in outcome.delivered:
        where, _, who = item.partition(":")
        parts.append({"sink": f"sent to {who}", "mailbox": f"{who}'s mailbox", "pipe": f"pipe {who}"}.get(where, item))
    for item in outcome.bounced:
        user, _, who = item.partition(":")
        parts.append(f"bounce to {user} for {who}")
    parts.extend(f"registered {who}" for who in outcome.learned)
    return "; ".join(parts) or "nothing"


COLUMNS = (("#", 2), ("step", 34), ("via", 8), ("reply", 5), ("amzguard decided", 25), ("where it went", 0))
"""The summary's columns and widths (0: the rest of the line); a cell that is too long wraps inside its column."""


def _row(cells: Sequence[str]) -> list[str]:
    rest = WIDTH - sum(width + 1 for _, width in COLUMNS if width)
    widths = [width or rest for _, width in COLUMNS]
    wrapped = [textwrap.wrap(cell, width, break_long_words=False, break_on_hyphens=False) or [""]
               for cell, width in zip(cells, widths)]  # fmt: skip
    height = max(len(lines) for lines in wrapped)
    padded = [lines + [""] * (height - len(lines)) for lines in wrapped]
    return [" ".join(f"{lines[i]:<{width}}" for lines, width in zip(padded, widths)).rstrip() for i in range(height)]


def summary(rows: list[tuple[Step, Seen, list[str]]]) -> None:
    """One screen: per step its path, the reply the shop system got, amzguard's decisions and where mail went."""
    out("Summary")
    for line in _row([f"{name:>{width}}" if name == "#" else name for name, width in COLUMNS]):
        out(line)
    out("─" * WIDTH)
    for number, (step, seen, problems) in enumerate(rows, 1):
        reply = "-" if seen.outcome.reply is None else str(seen.outcome.reply)
        where = _result(seen.outcome) + ("" if not problems else "  ** DIFFERS from the story, see above **")
        for line in _row([f"{number:>2}", step.title, step.via.value, reply, _decided(seen.outcome.decisions), where]):
            out(line)
    bad = sum(1 for _, _, problems in rows if problems)
    out("─" * WIDTH)
    differ = f"; {bad} DIFFER (see above)" if bad else ""
    out(f"{len(rows) - bad} of {len(rows)} steps as the story promises{differ}.")
    out("reply: what the shop system was told over SMTP; sendmail(1) exits 0 once the message is in the maildrop.")
    out()


def summary_markdown(rows: list[tuple[Step, Seen, list[str]]]) -> str:
    """The summary as a Markdown table (for the README: ``--markdown FILE``)."""
    lines = ["| # | step | via | reply | amzguard decided | where it went |", "|---|---|---|---|---|---|"]
    for number, (step, seen, problems) in enumerate(rows, 1):
        reply = "–" if seen.outcome.reply is None else str(seen.outcome.reply)
        where = _result(seen.outcome) + (" **(differs from the story)**" if problems else "")
        cells = [str(number), step.title, step.via.value, reply, _decided(seen.outcome.decisions), where]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def metrics(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], url: str) -> None:
    out(f"What amzguard counted (scraped from {url}; series that are 0 left out):")
    for (name, labels), value in sorted(samples.items(), key=lambda item: (SHOWN_METRICS.index(item[0][0])
                                                                           if item[0][0] in SHOWN_METRICS else 99,
                                                                           sorted(item[0][1]))):  # fmt: skip
        if name in SHOWN_METRICS and value:
            label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels))
            out(f"  {name}{{{label_text}}} {value:g}")
    out()


def keep_commands(stack: DemoStack) -> list[str]:
    """Command lines to send own messages to the running demo (printed, and in the JSON report)."""
    port = stack.postfix.smtp_port
    swaks = ["swaks", "--server", "127.0.0.1", "--port", str(port), "--from", SHOP]
    order_mail = [*swaks, "--to", "blacklisted-1001@amazon.fr",
                  "--header", "Subject: Your order 302-1000001-0000001 has shipped"]  # fmt: skip
    review = [*swaks, "--to", "blacklisted-1002@amazon.fr",
              "--header", "Subject: How was your order 302-1000002-0000002?",
              "--header", f"{TAG_HEADER}: review {stack.secret}"]  # fmt: skip
    message = (f"From: {SHOP}\\nTo: k3k3k3k3k3k3k3k3@marketplace.amazon.it\\n"
               "Subject: Your order 302-1000003-0000003 has shipped\\n\\nHello\\n")  # fmt: skip
    sendmail = f"printf {shlex.quote(message)} | /usr/sbin/sendmail -C {stack.postfix.config_dir} -t -i -f {SHOP}"
    return [shlex.join(order_mail), shlex.join(review), sendmail]


def keep_hint(stack: DemoStack, url: str, commands: list[str], pid: int) -> None:
    amzguard = Path(sys.executable).parent / "amzguard"
    cli = str(amzguard) if amzguard.exists() else f"{sys.executable} -m amzguard"
    postfix = stack.postfix
    out("The demo keeps running (KEEP=1). Send your own messages, e.g.:")
    out(f"  order mail to a marked buyer (550):   {commands[0]}")
    out(f"  a tagged review request (delivered):  {commands[1]}")
    out(f"  PHP mail() to a relay buyer (bounce): {commands[2]}")
    out("Then look:")
    out(f"  amzguard's decisions:  tail -f {stack.milter.log}")
    out(f"  Postfix's log:         tail -f {postfix.maillog_path}")
    out(f"  sent to the internet:  ls {postfix.sink.directory}")
    out(f"  the shop's mailbox:    ls {postfix.mail_dir}/shop/new   (bounces)")
    out(f"  metrics:               curl -s {url} | grep -v '^#'")
    out(f"  opt-out register:      {cli} optout list -c {stack.config}")
    out(f"  what would happen:     {cli} explain -c {stack.config} --sender {SHOP} blacklisted-1@amazon.fr")
    out(f"Stop it: Ctrl-C here, or kill -TERM {pid} (stops Postfix, smtp-sink and amzguard, removes {stack.workdir})")
