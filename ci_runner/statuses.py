"""Statuses in the user's words.

The engine keeps its own vocabulary (``errored``, ``waiting_for_event``, ``terminated``,
...); everything a person or a script reads (the live view, ``show``, ``runs``,
``--json``, the API, the server log) says the words below instead. This module is the
one place that translates, in both directions (``runs --status failed`` must find the
rows stored as ``errored``).
"""

from __future__ import annotations

# Engine word -> user word, for runs.
RUN_WORDS: dict[str, str] = {
    "queued": "queued",
    "running": "running",
    "waiting": "sleeping",  # a timer: step.sleep / sleep_until / a retry's delay
    "waiting_for_event": "waiting",  # an event or an approval; see phrase()
    "paused": "paused",
    "complete": "complete",
    "errored": "failed",
    "terminated": "cancelled",
    "interrupted": "interrupted",
}

# Every user word a run can have, in the order a listing explains them.
USER_RUN_STATUSES: tuple[str, ...] = (
    "queued", "running", "sleeping", "waiting", "paused",
    "complete", "failed", "cancelled", "interrupted",
)


def run_word(status: str) -> str:
    """The user word for an engine run status (unknown words pass through unchanged)."""
    return RUN_WORDS.get(status, status)


def engine_words(user_word: str) -> tuple[str, ...]:
    """The engine statuses a user word stands for; raises ValueError for an unknown word."""
    word = user_word.strip().lower().replace("_", " ")
    if word in ("waiting for approval", "waiting for event"):
        word = "waiting"
    found = tuple(engine for engine, user in RUN_WORDS.items() if user == word)
    if not found:
        raise ValueError(
            f"unknown status {user_word!r}: use one of {', '.join(USER_RUN_STATUSES)}"
        )
    return found



def engine_words_of(words: str) -> tuple[str, ...]:
    """``failed,cancelled`` -> the engine statuses they stand for, in order, once each;
    raises ValueError for a word that is not a status."""
    found: list[str] = []
    for word in words.split(","):
        found += [w for w in engine_words(word) if w not in found]
    return tuple(found)

def phrase(status: str, *, waiting_for: str | None = None) -> str:
    """An engine run status as a sentence fragment: 'waiting for approval', 'failed', ...

    ``waiting_for`` names what a waiting run waits on: 'approval', or an event type.
    """
    return said(run_word(status), waiting_for=waiting_for)


def said(word: str, *, waiting_for: str | None = None) -> str:
    """``phrase`` for a user word (a record's ``status``): 'waiting' says on what."""
    if word == "waiting":
        if waiting_for == "approval":
            return "waiting for approval"
        if waiting_for:
            return f"waiting for event {waiting_for}"
        return "waiting for an event"
    return word


# Every word a step can show, in the order a listing explains them. The journal stores
# most of them as they are; the others are said from what it stores (see step_word).
USER_STEP_STATUSES: tuple[str, ...] = (
    "pending", "running", "retrying", "sleeping", "waiting", "complete", "cached", "skipped",
    "failed", "rejected", "cancelled", "interrupted",
)


def step_word(status: str, kind: str, *, run_status: str | None = None,
              rejected: bool = False) -> str:
    """The user word for a step as the journal stores it.

    ``rejected``: the step is an approval gate whose answer was a rejection (the journal
    keeps it 'complete': the wait did get its answer). ``run_status`` (the engine word):
    a step left running in an interrupted run is stopped, not running.
    """
    if rejected:
        return "rejected"
    if status == "waiting" and kind == "sleep":
        return "sleeping"
    if status in ("running", "retrying") and run_status == "interrupted":
        return "interrupted"
    return status


def waiting_for(status: str, waits: object) -> str | None:
    """What a waiting run waits on: 'approval', an event type, or None (not waiting on
    anyone: running, sleeping on a timer, ended). ``waits`` is the journal's list."""
    if status != "waiting_for_event" or not isinstance(waits, list):
        return None
    items = [w for w in waits if isinstance(w, dict)]
    if any(w.get("approval") for w in items):
        return "approval"
    for w in items:
        if isinstance(w.get("event_type"), str):
            return str(w["event_type"])
    return None


def decision_word(decision: str | None) -> str:
    """'approve' -> 'approved', 'reject' -> 'rejected' (never 'rejectd')."""
    return {"approve": "approved", "reject": "rejected"}.get(str(decision), str(decision))
