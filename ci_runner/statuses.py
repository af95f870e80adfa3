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


def phrase(status: str, *, waiting_for: str | None = None) -> str:
    """A run's status as a sentence fragment: 'waiting for approval', 'failed', ...

    ``waiting_for`` names what a waiting run waits on: 'approval', or an event type.
    """
    word = run_word(status)
    if word == "waiting":
        if waiting_for == "approval":
            return "waiting for approval"
        if waiting_for:
            return f"waiting for event {waiting_for}"
        return "waiting for an event"
    return word
