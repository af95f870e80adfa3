"""A light or heavy step's log file, written as its output arrives (already masked).

The file is created with the step's first output: most checks that pass say
nothing, and creating a file costs more than running ``true`` does (~0.14 ms, and
a file-system journal entry that the next durable commit must flush too). Lines
about the attempt (its command, its exit code) go in only with output to frame;
``ci-runner logs`` says "no output" for a silent step, and ``show`` has its exit code.

A step's log is capped (``DEFAULT_LOG_CAP``, 64 MiB): a step that prints without
end must not fill the disk. Past the cap one marker line says so and the rest of
the output is dropped (counted in ``dropped_bytes``); the step keeps running, the
attempt's notes still go in, and the step's result keeps the output's last lines.
The cap is on the file, so every attempt of a step shares it.

With a PostgreSQL database (a fleet), what the file gets is also appended to the
database (``store.steplogs``), so any host shows the log.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import IO, Any

DEFAULT_LOG_CAP = 64 * 1024 * 1024


class StepLog:
    """Appends to ``path``; creates it (and its folder) on the first output.

    ``max_bytes`` caps what the file holds (``None``: no cap); ``truncated`` and
    ``dropped_bytes`` say whether output was dropped and how much (UTF-8 bytes).
    """

    def __init__(self, path: Path, max_bytes: int | None = DEFAULT_LOG_CAP) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"a step log's cap is a size in bytes, not {max_bytes}")
        self.path = path
        self.max_bytes = max_bytes
        self.truncated = False
        self.dropped_bytes = 0
        self._file: IO[bytes] | None = None
        self._size = 0
        self._at_line_start = True
        self._notes: list[str] = []
        self._mirror: Any = None  # store.steplogs.Mirror, on a fleet's database

    def note(self, line: str) -> None:
        """A line about the attempt: kept if the step has output to go with it."""
        if self._file is not None:
            self._put(line.encode("utf-8", "replace"))
        else:
            self._notes.append(line)

    def write(self, text: str) -> None:
        """Output of the step; flushed at once, so `logs --follow` sees it live."""
        if not text:
            return
        if self.truncated:
            self.dropped_bytes += len(text) if text.isascii() else _size(text)
            return
        if self._file is None:
            self._open()
        data = text.encode("utf-8", "replace")
        room = None if self.max_bytes is None else self.max_bytes - self._size
        if room is not None and len(data) > room:
            room = max(room, 0)
            while room > 0 and data[room] & 0xC0 == 0x80:  # not inside a character
                room -= 1
            self._put(data[:room], flush=False)
            self.truncated = True
            self.dropped_bytes += len(data) - room
            self._put(self._marker())
            return
        self._put(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._mirror is not None:
            self._mirror.flush()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        from ci_runner.store.steplogs import Mirror

        self._mirror = Mirror.for_path(self.path)
        # The file may hold earlier attempts' output: the cap is on the file.
        self._size = self._file.tell()
        notes, self._notes = "".join(self._notes), []
        if notes:
            self._put(notes.encode("utf-8", "replace"), flush=False)

    def _put(self, data: bytes, *, flush: bool = True) -> None:
        assert self._file is not None
        if data:
            self._file.write(data)
            if self._mirror is not None:
                self._mirror.write(data, flush=flush)
            self._size += len(data)
            self._at_line_start = data.endswith(b"\n")
        if flush:
            self._file.flush()

    def _marker(self) -> bytes:
        cap = _human(self.max_bytes or 0)
        line = (f"--- output truncated: this step wrote more than {cap}; the rest was"
                " dropped (its last lines are in the step's result) ---\n")
        return (b"" if self._at_line_start else b"\n") + line.encode()

    def __enter__(self) -> StepLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _size(text: str) -> int:
    return len(text.encode("utf-8", "replace"))


def _human(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MiB"
    if size >= 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size} bytes"
