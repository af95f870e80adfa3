"""Masking what a run stores and shows, not only what its commands print.

Step output is masked by the broker as it streams. But a secret can also reach the
journal another way: a step writes it to a file, pipeline code reads it and returns
it from ``step.do``, raises it in an exception, prints it, or puts it in a step's
name. The run's ``Redactor`` holds every secret value the run may know (all of its
secrets file, and whatever the broker resolved from the environment) and masks
strings anywhere in a JSON value; the driver applies it to every result, error and
output it commits or shows, and refuses a step name that holds a secret.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ci_runner.errors import UsageError
from ci_runner.executors.masking import Masker


class Redactor:
    """Secret values of one run; thread-safe (the broker adds, the driver masks)."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = {v for v in values if v}
        self._masker = Masker(self._values)

    @classmethod
    def for_secrets_file(cls, path: Path | None) -> Redactor:
        """Every value in the run's secrets file (an unreadable file adds none: the
        step that asks for a secret will say what is wrong with it)."""
        values: list[str] = []
        if path is not None:
            from ci_runner.secrets import resolve_secrets, secret_names

            try:
                values = list(resolve_secrets(secret_names(path), environ={},
                                              secrets_file=path).values())
            except (UsageError, OSError):
                values = []
        return cls(values)

    def add(self, values: Iterable[str]) -> None:
        new = {v for v in values if v} - self._values
        if new:
            with self._lock:
                self._values |= new
                self._masker = Masker(self._values)

    def __bool__(self) -> bool:
        return bool(self._values)

    def text(self, value: str) -> str:
        return self._masker.mask(value) if self._values else value

    def value(self, value: Any) -> Any:
        """``value`` with every string in it (keys included) masked."""
        if not self._values:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {self.text(k) if isinstance(k, str) else k: self.value(v)
                    for k, v in value.items()}
        return value

    def check_name(self, name: str) -> None:
        if self._values and self.text(name) != name:
            raise UsageError(f"step {self.text(name)!r}: a step's name must not hold a secret"
                             " (names are stored and shown as they are)")
