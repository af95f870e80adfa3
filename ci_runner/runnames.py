"""Naming a run by hand, in the user's words: the local CLI, the remote one and the
server say the same when a prefix names several runs or no run is named at all.

A run is named by its id or a unique prefix of it; ``approve``/``reject`` with no run
take the one run waiting for an approval.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ci_runner.errors import UsageError

SHOWN = 5  # candidates an ambiguous prefix lists


class Row(Protocol):
    """A stored run (an ``instances`` row) as the store returns it."""

    def __getitem__(self, key: str) -> Any: ...


def ambiguous(ref: str, candidates: Sequence[Row]) -> UsageError:
    """The error for a prefix that names several runs (``instances`` rows, newest
    first): the first few, so the user can give more of the id."""
    shown = ", ".join(_candidate(r) for r in candidates[:SHOWN])
    more = f" and {len(candidates) - SHOWN} more" if len(candidates) > SHOWN else ""
    return UsageError(
        f"run {ref!r} is ambiguous: {len(candidates)} runs start with it: {shown}{more};"
        " give more of the id"
    )


def _candidate(row: Row) -> str:
    from ci_runner.statuses import run_word

    payload = row["payload"]
    loaded = json.loads(payload) if isinstance(payload, str) else payload
    meta = (loaded or {}).get("__dispatcherMetadata") or {}
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["created_at"]))
    repo = f"{meta['repo_name']}, " if meta.get("repo_name") else ""
    return f"{row['id']} ({repo}{run_word(str(row['status']))}, {when})"


def awaiting_approval(records: Sequence[Mapping[str, Any]], where: str) -> str | None:
    """The one run that the pending ``records`` (``pending``'s, one per wait) show
    waiting for an approval; None when there is none. Several are an error that lists
    them. ``where`` ends the error's subject: " of app", " on https://ci.example"."""
    waiting = approvals(records)
    if len(waiting) == 1:
        return str(waiting[0]["run_id"])
    if waiting:
        listed = ", ".join(f"{r['run_id']} ({r['repo']}, step {r['step']!r})" for r in waiting)
        raise UsageError(f"{len(waiting)} runs{where} wait for an approval: {listed};"
                         " name one (`ci-runner pending` lists them)")
    return None


def approvals(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One record per run that waits for an approval."""
    seen: dict[str, Mapping[str, Any]] = {}
    for r in records:
        if r["what"] == "approval":
            seen.setdefault(str(r["run_id"]), r)
    return list(seen.values())
