"""``amzguard lint FILE.eml…``: the milter's whole judgement of a message file, every finding with its line.

Shop owners run it on their review-request and critical-message templates before using them. It drives
the same ``Transaction`` as the milter (through ``explain.judge``): the envelope (``--to``, else the file's To/Cc; ``--sender``, else
the first From address), every header field, the body in the MTA's chunk size, the store's answers
(opt-outs, earlier review requests; read only, and only if the store exists), then the judgement. So a
template that lint passes is one the milter passes, and the other way round (a test runs both on the
same files).

Exit status: 0 clean (no finding, no recipient refused), 1 findings or a refused recipient, 2 an error
(unreadable file, no recipient).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path

from .address import parse_address
from .config import Config
from .content import ContentAction, Finding, split_message
from .content.reader import decoded_header
from .decision_log import bracketed
from .explain import judge, limit_lines, plan_lines, recognised_text
from .store import Store, open_store
from .policy import NO_ORIGIN, ChangeHeader, Mode, Origin, Policy, SubmissionPath
from .transaction import Judgement

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2


class LintError(Exception):
    """A file that cannot be judged (unreadable, no recipient); lint exits 2."""


@dataclass(frozen=True, slots=True)
class LintResult:
    file: str
    sender: str
    recipients: tuple[str, ...]
    judgement: Judgement
    store_note: str | None = None
    limit_notes: tuple[str, ...] = ()
    """What the daily limit would do at today's count (explain.limit_lines)."""

    @property
    def clean(self) -> bool:
        refused = any(d.refused for d in self.judgement.all_decisions())
        return not refused and not self.judgement.findings


def _header_addresses(values: Sequence[str]) -> list[str]:
    return [address for _, address in getaddresses([decoded_header(v) for v in values]) if address]


def lint_message(
    config: Config,
    raw: bytes,
    name: str,
    to: Sequence[str] = (),
    sender: str | None = None,
    path: SubmissionPath = SubmissionPath.SMTP,
    store: Store | None = None,
    origin: Origin = NO_ORIGIN,
) -> LintResult:
    headers, body, _ = split_message(raw)
    by_name = lambda wanted: [h.value for h in headers if h.name.casefold() in wanted]  # noqa: E731
    recipients = list(to) or _header_addresses(by_name({"to", "cc"}))
    if not recipients:
        raise LintError(f"{name}: no recipient: the file has no To/Cc address; give --to ADDRESS")
    if sender is None:
        senders = _header_addresses(by_name({"from"}))[:1]
        sender = senders[0] if senders else ""
    policy = Policy.from_settings(config.policy)
    offline = judge(policy, sender, path, headers, recipients, store, body=body, origin=origin)
    return LintResult(name, sender, tuple(recipients), offline.judgement, offline.store_note, tuple(limit_lines(offline)))


def lint_file(config: Config, file: str, **options: object) -> LintResult:
    try:
        raw = Path(file).read_bytes() if file != "-" else sys.stdin.buffer.read()
    except OSError as exc:
        raise LintError(f"{file}: cannot read: {exc.strerror}") from None
    return lint_message(config, raw, file, **options)  # type: ignore[arg-type]


def _finding_line(result: LintResult, finding: Finding) -> str:
    where = f"{result.file}:{finding.line}" if finding.line else result.file
    return f"{where}: {finding.action.value}: {finding.rule.value}: {finding.evidence}"


def text_lines(result: LintResult, mode: Mode) -> list[str]:
    judgement = result.judgement
    would = "would " if mode is Mode.MONITOR else ""
    lines = [f"{result.file}: from {bracketed(parse_address(result.sender))}"]
    for decision in judgement.all_decisions():
        lines.append(
            f"{result.file}: {bracketed(decision.recipient.address)}: {would}{decision.outcome.value}"
            f" (reason {decision.reason.value}, channel {decision.channel.value}){recognised_text(decision)}"
        )
    for finding in sorted(judgement.findings, key=lambda f: (f.line, f.rule.value)):
        lines.append(_finding_line(result, finding))
    if result.store_note:
        lines.append(f"{result.file}: note: {result.store_note}")
    if judgement.truncated:
        lines.append(f"{result.file}: note: the text was read only up to content.max_bytes")
    lines += [f"{result.file}: {note}" for note in result.limit_notes]
    lines += [f"{result.file}: {line}" for line in plan_lines(judgement.plan, mode)]
    return lines


def json_object(result: LintResult) -> dict[str, object]:
    judgement = result.judgement
    plan = judgement.plan
    return {
        "file": result.file,
        "sender": result.sender,
        "clean": result.clean,
        "recipients": [
            {
                "address": decision.recipient.address.text(),
                "outcome": decision.outcome.value,
                "reason": decision.reason.value,
                "channel": decision.channel.value,
                "recognised_by": [by.value for by in decision.recognised_by],
            }
            for decision in judgement.all_decisions()
        ],
        "findings": [
            {"rule": f.rule.value, "action": f.action.value, "evidence": f.evidence, "line": f.line}
            for f in sorted(judgement.findings, key=lambda f: (f.line, f.rule.value))
        ],
        "order_id": judgement.facts.order_id,
        "refused_whole": plan.reject.text if plan is not None and plan.reject is not None else None,
        "rewritten_headers": [
            {"name": c.name, "index": c.index, "value": c.value}
            for c in (plan.changes if plan is not None and plan.reject is None else ())
            if isinstance(c, ChangeHeader)
        ],
        "removed_headers": sorted({f.header for f in judgement.findings if f.action is ContentAction.REMOVE and f.header}),
        "note": result.store_note,
        "daily_limit": list(result.limit_notes),
    }


def run(
    config: Config,
    files: Sequence[str],
    to: Sequence[str] = (),
    sender: str | None = None,
    path: SubmissionPath = SubmissionPath.SMTP,
    as_json: bool = False,
    origin: Origin = NO_ORIGIN,
    out: object = None,
    err: object = None,
) -> int:
    """Lint every file; print the results; the exit status of the whole run (the worst file's)."""
    out = out or sys.stdout
    err = err or sys.stderr
    # As explain: a SQLite file is read only if it exists (linting must not create one); a database is asked.
    store = open_store(config.store) if config.store.url or config.store.path.exists() else None
    status = EXIT_CLEAN
    objects: list[dict[str, object]] = []
    try:
        for file in files:
            try:
                result = lint_file(config, file, to=to, sender=sender, path=path, store=store, origin=origin)
            except LintError as exc:
                print(f"amzguard: lint: {exc}", file=err)  # type: ignore[call-overload]
                status = EXIT_ERROR
                continue
            if not result.clean and status == EXIT_CLEAN:
                status = EXIT_FINDINGS
            if as_json:
                objects.append(json_object(result))
            else:
                for line in text_lines(result, config.policy.mode):
                    print(line, file=out)  # type: ignore[call-overload]
    finally:
        if store is not None:
            store.shutdown()
    if as_json:
        print(json.dumps(objects, indent=2, ensure_ascii=False), file=out)  # type: ignore[call-overload]
    return status
