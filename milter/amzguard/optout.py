"""Compatibility for branches written before the store moved to ``amzguard.store`` (it holds review
requests and buyer messages too, and has two backends). Remove once nothing imports it."""

from __future__ import annotations

from .store import SOURCES, Counts, OptOut, StoreError, SqliteStore

OptOutStore = SqliteStore

__all__ = ["SOURCES", "Counts", "OptOut", "OptOutStore", "StoreError"]
