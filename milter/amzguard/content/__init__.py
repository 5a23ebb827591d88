"""Content rules: what a message that reaches a buyer may contain (Amazon's communication guidelines).

Pure: ``BodyScanner`` (reader.py) turns body chunks into a ``ContentView``; ``judge_content`` (rules.py)
runs the configured rules on it and returns findings, each with its rule, action, evidence and line.
The milter, ``amzguard lint`` and the tests all call these same two steps.
"""

from .model import (
    DEFAULT_ACTIONS,
    DEFAULT_ATTACHMENT_TYPES,
    DEFAULT_LINK_DOMAINS,
    DEFAULT_MAX_ATTACHMENT_BYTES,
    DEFAULT_MAX_BYTES,
    LANGUAGES,
    REMOVABLE_RULES,
    UNSUBSCRIBE_HEADERS,
    ContentAction,
    ContentRule,
    ContentSettings,
    ContentVerdict,
    Finding,
)
from .reader import BodyScanner, ContentView, HeaderField, split_message
from .rules import CONTENT_HEADERS, judge_content, needs_any_body, needs_body, wanted_headers

__all__ = [
    "BodyScanner",
    "CONTENT_HEADERS",
    "ContentAction",
    "ContentRule",
    "ContentSettings",
    "ContentVerdict",
    "ContentView",
    "DEFAULT_ACTIONS",
    "DEFAULT_ATTACHMENT_TYPES",
    "DEFAULT_LINK_DOMAINS",
    "DEFAULT_MAX_ATTACHMENT_BYTES",
    "DEFAULT_MAX_BYTES",
    "Finding",
    "HeaderField",
    "LANGUAGES",
    "REMOVABLE_RULES",
    "UNSUBSCRIBE_HEADERS",
    "judge_content",
    "judge_message",
    "read_body",
    "needs_any_body",
    "needs_body",
    "CHUNK",
    "split_message",
    "wanted_headers",
]


CHUNK = 64 * 1024
"""Postfix hands a milter the body in chunks of this size; files are fed the same way."""


def read_body(headers: list[HeaderField], body: bytes, first_line: int, settings: ContentSettings) -> ContentView:
    """Scan a whole body held in memory (lint, tests) exactly as the milter scans its chunks."""
    scanner = BodyScanner(headers, first_line, settings.max_bytes, settings.skip_quoted)
    for start in range(0, len(body), CHUNK):
        scanner.feed(body[start : start + CHUNK])
    return scanner.finish()


def judge_message(raw: bytes, settings: ContentSettings, proactive: bool) -> ContentVerdict:
    """The content verdict on a whole message file: headers with their lines, the body as the milter reads it."""
    headers, body, first_line = split_message(raw)
    view = read_body(headers, body, first_line, settings) if needs_body(settings, headers, proactive) else None
    return judge_content(settings, headers, view, proactive)
