"""The SQLite store: connection settings, transactions and the schema's migrations."""

from __future__ import annotations

from ci_runner.store.db import connect, immediate, now

__all__ = ["connect", "immediate", "now"]
