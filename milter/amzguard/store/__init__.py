"""amzguard's store: one protocol (``Store``), two backends (SQLite, PostgreSQL); see base.py.

``open_store(settings)`` gives the backend the configuration names: PostgreSQL when ``store.url`` is set,
else the SQLite file ``store.path``. ``open_location(text)`` does the same for a location given on the
command line (``amzguard store copy --from … --to …``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import (
    COUNT_DAYS,
    SCHEMA_VERSION,
    SOURCES,
    Counts,
    DailyCount,
    DailyLimitReached,
    MessageRow,
    OverLimit,
    OptOut,
    ReviewRow,
    SchemaError,
    Status,
    Store,
    StoreError,
)
from .sqlite import SqliteStore

if TYPE_CHECKING:
    from ..config import StoreSettings

__all__ = [
    "COUNT_DAYS", "SCHEMA_VERSION", "SOURCES", "Counts", "MessageRow", "OptOut", "ReviewRow", "SchemaError", "Status", "Store",
    "StoreError", "SqliteStore", "DailyCount", "DailyLimitReached", "OverLimit", "BACKENDS", "open_store", "open_location", "is_postgres_location",
]  # fmt: skip

BACKENDS = ("sqlite", "postgresql")
"""The ``backend`` label values of the store metrics."""


def is_postgres_location(text: str) -> bool:
    """A libpq URI (postgresql://, postgres://) or keyword string (``host=… dbname=…``)."""
    return text.startswith(("postgresql://", "postgres://")) or ("=" in text and not text.startswith(("/", "sqlite:")))


def open_store(settings: StoreSettings) -> Store:
    if settings.url:
        from .postgres import PostgresStore

        return PostgresStore(
            settings.url, settings.retention_days, password=settings.password,
            connect_timeout=settings.connect_timeout, statement_timeout=settings.statement_timeout,
            pool_size=settings.pool_size,
        )  # fmt: skip
    return SqliteStore(settings.path, settings.retention_days)


def open_location(text: str, retention_days: int = 730, password: str | None = None) -> Store:
    """A store named on the command line: a libpq URI or keyword string, ``sqlite:PATH`` or a file path."""
    if is_postgres_location(text):
        from .postgres import PostgresStore

        return PostgresStore(text, retention_days, password=password)
    path = text.removeprefix("sqlite://").removeprefix("sqlite:")
    return SqliteStore(Path(path), retention_days)
