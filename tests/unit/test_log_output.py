"""The log handler: one whole line per record, also with many threads and long records."""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Iterator

import pytest

from amzguard.log_output import LineHandler, configure_logging


@pytest.fixture
def pipe_logger() -> Iterator[tuple[logging.Logger, int]]:
    read_fd, write_fd = os.pipe()
    handler = LineHandler(write_fd)
    handler.setFormatter(logging.Formatter("amzguard[%(process)d]: %(levelname)s: %(message)s"))
    logger = logging.getLogger("amzguard.test-log-output")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield logger, read_fd
    finally:
        logger.removeHandler(handler)
        os.close(write_fd)
        os.close(read_fd)


def _drain(read_fd: int) -> str:
    chunks = []
    while select.select([read_fd], [], [], 0.2)[0]:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8")


def test_a_record_is_one_formatted_line(pipe_logger: tuple[logging.Logger, int]) -> None:
    logger, read_fd = pipe_logger
    logger.info("4XhK2m1bQz: rcpt=<%s> decision=refuse", "blacklisted-40417@amazon.fr")
    assert _drain(read_fd) == (
        f"amzguard[{os.getpid()}]: INFO: 4XhK2m1bQz: rcpt=<blacklisted-40417@amazon.fr> decision=refuse\n"
    )


def test_lines_from_many_threads_are_never_mixed(pipe_logger: tuple[logging.Logger, int]) -> None:
    logger, read_fd = pipe_logger
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(_drain_until_quiet(read_fd)))
    reader.start()

    def write(thread: int) -> None:
        for n in range(300):
            logger.info("thread=%d n=%d %s", thread, n, "x" * (n % 150))

    writers = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    reader.join()
    expected = [
        f"amzguard[{os.getpid()}]: INFO: thread={t} n={n} {'x' * (n % 150)}" for t in range(8) for n in range(300)
    ]
    assert sorted(received[0].splitlines()) == sorted(expected)


def _drain_until_quiet(read_fd: int) -> str:
    chunks = []
    while select.select([read_fd], [], [], 1.0)[0]:
        chunks.append(os.read(read_fd, 65536))
    return b"".join(chunks).decode("utf-8")


def test_a_long_record_arrives_whole(pipe_logger: tuple[logging.Logger, int]) -> None:
    logger, read_fd = pipe_logger
    logger.error("traceback-like %s end", "y" * (3 * select.PIPE_BUF))
    text = _drain(read_fd)
    assert text.count("\n") == 1 and text.endswith(" end\n") and "y" * (3 * select.PIPE_BUF) in text


def test_undecodable_octets_are_escaped_not_fatal(pipe_logger: tuple[logging.Logger, int]) -> None:
    logger, read_fd = pipe_logger
    logger.info("raw %s", b"\xff\xfeuser".decode("utf-8", "surrogateescape"))
    assert _drain(read_fd).endswith("raw \\udcff\\udcfeuser\n")


def test_configure_leaves_existing_handlers_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    existing = logging.NullHandler()
    monkeypatch.setattr(root, "handlers", [existing])
    configure_logging("debug")
    assert root.handlers == [existing]
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    configure_logging("warning")
    assert [type(h) for h in root.handlers] == [LineHandler] and root.level == logging.WARNING
