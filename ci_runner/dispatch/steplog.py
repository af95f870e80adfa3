"""A light or heavy step's log file, written as its output arrives (already masked).

The file is created with the step's first output: most checks that pass say
nothing, and creating a file costs more than running ``true`` does (~0.14 ms, and
a file-system journal entry that the next durable commit must flush too). Lines
about the attempt (its command, its exit code) go in only with output to frame;
``ci-runner logs`` says "no output" for a silent step, and ``show`` has its exit code.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import IO


class StepLog:
    """Appends to ``path``; creates it (and its folder) on the first output."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._notes: list[str] = []

    def note(self, line: str) -> None:
        """A line about the attempt: kept if the step has output to go with it."""
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        else:
            self._notes.append(line)

    def write(self, text: str) -> None:
        """Output of the step; flushed at once, so `logs --follow` sees it live."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
            self._file.write("".join(self._notes))
            self._notes.clear()
        self._file.write(text)
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> StepLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
