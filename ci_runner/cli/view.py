"""The terminal view of a run: a live checklist of steps on a TTY, plain lines otherwise.

This is the only module that imports rich (lazily), so `ci-runner --help` and
the pipeline's child process never pay for it.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ci_runner.cli.report import WAITING, step_label
from ci_runner.engine.policy import APPROVAL_EVENT
from ci_runner.statuses import decision_word, said

ICONS = {"pending": "·", "running": "▶", "complete": "✓", "failed": "✗", "retrying": "↻",
         "skipped": "⊘", "waiting": "⏸", "sleeping": "⏾", "cached": "≡", "cancelled": "⊗",
         "rejected": "✗", "interrupted": "■"}
STYLES = {"running": "bold cyan", "complete": "green", "failed": "bold red",
          "retrying": "yellow", "skipped": "dim", "cancelled": "dim", "waiting": "magenta",
          "sleeping": "blue", "rejected": "bold red", "interrupted": "yellow",
          "cached": "green"}
TAIL_LINES = 12
# A failed step's excerpt: its first error-looking lines (the cause, often far above the
# end: npm's ERR! block, ruff's diagnostics, a test's assertion) and then its last lines.
FIRST_ERROR_LINES = 8
EXCERPT_LINE_CHARS = 400
ERROR_LOOKING = re.compile(
    r"\berror\b\s*(?:[:\[(]|TS\d)"  # error: (gcc, git, rustc error[E..], tsc error TS..)
    r"|\bERROR\b|\bERR!"  # ERROR (pytest's summary), npm ERR!
    r"|^\s*npm (?:error|ERR!)"  # npm >= 9
    r"|\b[A-Z]\w*(?:Error|Exception)\b"  # Python's and JavaScript's exceptions
    r"|^Traceback \(most recent call last\)"
    r"|\bFAILED\b|^\s*FAIL\b"  # pytest, jest
    r"|^E {2,}\S"  # pytest's assertion lines
    r"|^\s*(?:-->\s*)?[\w./\\-]+:\d+:\d+(?::|\s|$)"  # path:line:col (ruff, flake8, gcc)
    r"|^[A-Z]{1,3}\d{3,4} (?:\[\*\] )?\S"  # a lint rule's code first (ruff's full format)
    r"|^\S+\.py:\d+: error"  # mypy without columns
    r"|\b(?:fatal|panic):",
)


_LINE_COL = re.compile(r":\d+:\d")


def may_look_like_error(line: str) -> bool:
    """A cheap test that every line ERROR_LOOKING finds passes (substring searches run
    in C; the full expression tries all its branches at every position of a line)."""
    return ("rror" in line or "ERR" in line or "Exception" in line or "FAIL" in line
            or "Traceback" in line or "fatal:" in line or "panic:" in line
            or line[:1].isupper() or (":" in line and _LINE_COL.search(line) is not None))


@dataclass
class StepState:
    label: str
    kind: str = ""
    status: str = "pending"
    attempt: int = 1
    max_attempts: int = 1
    started: float = field(default_factory=time.monotonic)
    duration_s: float | None = None
    exit_code: int | None = None
    replayed: bool = False
    note: str = ""
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    partial: str = ""
    lines: int = 0  # whole lines printed by the current attempt
    errors: list[tuple[int, str]] = field(default_factory=list)  # its first error-looking

    def new_attempt(self) -> None:
        """A retry starts: the excerpt is of the attempt that failed last."""
        self.tail.clear()
        self.partial, self.lines, self.errors = "", 0, []

    def add_line(self, line: str) -> None:
        self.tail.append(line)
        self.lines += 1
        if (len(self.errors) < FIRST_ERROR_LINES and may_look_like_error(line)
                and ERROR_LOOKING.search(line)):
            self.errors.append((self.lines, line))

    def excerpt(self) -> list[str]:
        """The lines to show under a failed step: its first error-looking lines, then
        its last lines, with a marker for what lies between; bounded in size."""
        tail = list(self.tail) + ([self.partial] if self.partial else [])
        tail = tail[-TAIL_LINES:]
        first_of_tail = self.lines + (1 if self.partial else 0) - len(tail) + 1
        shown: list[str] = []
        last = 0  # the number of the line shown last
        for number, line in self.errors:
            if number >= first_of_tail:
                break  # the tail shows it
            if number > last + 1:
                shown.append(_elided(number - last - 1))
            shown.append(_clip(line))
            last = number
        if shown and first_of_tail > last + 1:
            shown.append(_elided(first_of_tail - last - 1))
        return shown + [_clip(line) for line in tail]


def _elided(count: int) -> str:
    return f"  ⋮ {count} line{'s' if count != 1 else ''} ⋮"


def _clip(line: str) -> str:
    return line if len(line) <= EXCERPT_LINE_CHARS else line[:EXCERPT_LINE_CHARS] + " …"


_LONGEST_SHOWN = 4096
_IN_FLIGHT = ("running", "retrying", "waiting", "sleeping")
# A line the pipeline's own code printed (a step's is "  [step] ...").
PIPELINE_PREFIX = "  (pipeline) "


class RunView:
    """Receives engine observer events; subclasses decide how to show them."""

    def __init__(self) -> None:
        self.steps: dict[str, StepState] = {}
        self.last_active: str | None = None
        self.started = time.monotonic()
        self.title = ""
        self.pipeline_partial = ""  # the pipeline's own output: a line not ended yet

    def __call__(self, event: dict[str, Any]) -> None:
        if event["type"] == "step":
            self._on_step(event)
        elif event["type"] == "output":
            label = step_label(event["name"], event["occurrence"])
            state = self.steps.setdefault(label, StepState(label))
            self._on_output(state, event["text"])
        elif event["type"] == "pipeline_output":  # from the broker's thread
            lines = (self.pipeline_partial + event["text"]).split("\n")
            self.pipeline_partial = lines.pop()[-_LONGEST_SHOWN:]
            for line in lines:
                self.on_pipeline_line(line)

    def _on_step(self, event: dict[str, Any]) -> None:
        label = step_label(event["name"], event["occurrence"])
        state = self.steps.get(label)
        if state is None:
            state = self.steps[label] = StepState(label, kind=event.get("kind", ""))
        status = event["status"]
        if status == "running":
            if state.status == "retrying":
                state.new_attempt()
            state.started = time.monotonic()
            state.attempt = event.get("attempt", 1)
            state.max_attempts = event.get("max_attempts", 1)
            state.exit_code = None
            state.duration_s = None
            self.last_active = label
        state.replayed = bool(event.get("replayed"))
        if event.get("duration_s") is not None:
            state.duration_s = float(event["duration_s"])
        elif status in ("failed", "retrying"):
            state.duration_s = time.monotonic() - state.started
        result = event.get("result")
        detail = event.get("detail") or {}
        if isinstance(result, dict) and isinstance(result.get("exit_code"), int):
            state.exit_code = result["exit_code"]
        elif isinstance(detail.get("exit_code"), int):
            state.exit_code = detail["exit_code"]
        if status == "retrying":
            state.note = f"retry in {event.get('retry_in', 0):g}s: {_message(event)}"
        elif status in ("failed", "rejected", "cancelled"):
            state.note = _message(event)
        elif status == "skipped" and detail.get("skipped"):
            state.note = str(detail["skipped"])
        elif status == "waiting" and event.get("event_type") == APPROVAL_EVENT:
            state.note = "waiting for approval"
        elif status == "waiting" and event.get("event_type"):
            state.note = f"waiting for event {event['event_type']!r}"
        elif status == "sleeping":
            state.note = f"until {time.strftime('%H:%M:%S', time.localtime(event['wake_at']))}"
        else:
            state.note = ""
        state.status = status
        self.on_change(state)

    def _on_output(self, state: StepState, text: str) -> None:
        # A line still growing keeps only its end: the view shows the last 4 KiB of a
        # line longer than that (the log has it whole, up to its cap), and a 100 MB line
        # costs what its size does, not its size squared.
        if "\n" not in text:
            state.partial = (state.partial + text)[-_LONGEST_SHOWN:]
            return
        lines = (state.partial + text).split("\n")
        state.partial = lines.pop()[-_LONGEST_SHOWN:]
        for line in lines:
            state.add_line(line)
            self.on_line(state, line)

    def header(self, record: dict[str, Any]) -> None:
        """Say what is about to run: the repo, commit and run id."""
        self.title = title(record)

    def on_change(self, state: StepState) -> None:
        """A step changed status."""

    def on_line(self, state: StepState, line: str) -> None:
        """A step printed a whole line."""

    def on_pipeline_line(self, line: str) -> None:
        """The pipeline's own code printed a line, or Python warned about it."""

    def close(self, record: dict[str, Any]) -> None:
        """The run stopped (ended or hibernated): print the summary."""

    def flush(self) -> None:
        """Nothing more has arrived for now: what was printed must reach the reader."""

    def settle(self, record: dict[str, Any]) -> None:
        """Steps still shown in flight take the state the run's record gives them: no
        event says so when the run was interrupted, or cancelled from elsewhere."""
        recorded = {s["name"]: s for s in record.get("steps", [])}
        for state in self.steps.values():
            step = recorded.get(state.label)
            if (step is None or state.status not in _IN_FLIGHT
                    or step["status"] in (state.status, "retrying")):
                continue
            if state.status == "running":
                state.duration_s = time.monotonic() - state.started
            state.status, state.note = step["status"], step.get("error") or ""
            self.on_change(state)


class PlainView(RunView):
    """Line output for logs and pipes: one line per step change, output prefixed."""

    # Lines held before they are written anyway, however busy the run.
    HOLD_LINES = 1024

    def __init__(self, stream: Any = None) -> None:
        super().__init__()
        self.stream = stream or sys.stdout
        # Lines are held here, not written one by one: a step printing a line at a time
        # must not cost a write per line (stdout may be unbuffered: PYTHONUNBUFFERED).
        # flush() writes them when the driver finds nothing more to read, so a reader
        # of the pipe still sees each line as soon as the run goes quiet. A lock: the
        # pipeline's own lines come from the broker's thread.
        self._held: list[str] = []
        self._lock = threading.Lock()

    def _print(self, text: str) -> None:
        with self._lock:
            self._held.append(text)
            full = len(self._held) >= self.HOLD_LINES
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            held, self._held = self._held, []
            if held:
                self.stream.write("\n".join(held) + "\n")
            self.stream.flush()

    def header(self, record: dict[str, Any]) -> None:
        super().header(record)
        self._print(self.title)
        self.flush()

    def on_change(self, state: StepState) -> None:
        icon = ICONS.get(state.status, "?")
        parts = [f"{icon} {state.label}", state.status]
        if state.replayed:
            parts.append("(replayed)")
        if state.status == "running" and state.max_attempts > 1:
            parts.append(f"attempt {state.attempt}/{state.max_attempts}")
        if state.duration_s is not None and state.status != "running":
            parts.append(f"{state.duration_s:.2f}s")
        if state.exit_code not in (None, 0):
            parts.append(f"exit {state.exit_code}")
        if state.note:
            parts.append(f"- {state.note}")
        self._print(" ".join(parts))
        self.flush()

    def on_line(self, state: StepState, line: str) -> None:
        self._print(f"  [{state.label}] {line}")

    def on_pipeline_line(self, line: str) -> None:
        self._print(f"{PIPELINE_PREFIX}{line}")

    def close(self, record: dict[str, Any]) -> None:
        for state in self.steps.values():
            if state.partial:
                self._print(f"  [{state.label}] {state.partial}")
                state.partial = ""
        self.settle(record)
        if self.pipeline_partial:
            self.on_pipeline_line(self.pipeline_partial)
            self.pipeline_partial = ""
        self._print(summary(record))
        self.flush()


class LiveView(RunView):
    """The rich live checklist: steps light up as they commit; the running step's tail."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.live = Live(get_renderable=self._render, console=self.console,
                         refresh_per_second=10, transient=False)
        self.live.start()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 1))
        table.add_column(width=1)
        table.add_column(min_width=16)
        table.add_column(min_width=9)
        table.add_column(justify="right", min_width=7)
        table.add_column()
        for state in list(self.steps.values()):
            style = STYLES.get(state.status, "")
            seconds = state.duration_s
            if state.status == "running":
                seconds = time.monotonic() - state.started
            status = state.status + (" (replayed)" if state.replayed else "")
            if state.status == "running" and state.max_attempts > 1:
                status += f" {state.attempt}/{state.max_attempts}"
            note = state.note
            if state.exit_code not in (None, 0):
                note = f"exit {state.exit_code} {note}".strip()
            table.add_row(
                Text(ICONS.get(state.status, "?"), style=style), Text(state.label, style=style),
                Text(status, style=style),
                Text("" if seconds is None else f"{seconds:.1f}s", style="dim"),
                Text(note, style="dim", overflow="ellipsis", no_wrap=True),
            )
        parts: list[Any] = [Text(self.title, style="bold")] if self.title else []
        parts.append(table)
        active = self.steps.get(self.last_active or "")
        running = [s for s in self.steps.values() if s.status == "running"]
        if running and (active is None or active.status != "running"):
            active = running[-1]
        if active is not None and active.status == "running" and (active.tail or active.partial):
            lines = list(active.tail) + ([active.partial] if active.partial else [])
            parts.append(Panel(Text("\n".join(lines[-TAIL_LINES:]), overflow="ellipsis"),
                               title=active.label, title_align="left", border_style="dim"))
        elapsed = time.monotonic() - self.started
        parts.append(Text(f"{elapsed:.1f}s", style="dim"))
        return Group(*parts)

    def on_pipeline_line(self, line: str) -> None:
        # Above the live checklist, where it stays: the pipeline's, not a step's.
        from rich.text import Text

        self.console.print(Text.assemble((PIPELINE_PREFIX, "magenta"), line))

    def close(self, record: dict[str, Any]) -> None:
        if self.pipeline_partial:
            self.on_pipeline_line(self.pipeline_partial)
            self.pipeline_partial = ""
        self.settle(record)
        self.live.update(self._render(), refresh=True)
        self.live.stop()
        failed = [s for s in self.steps.values()
                  if s.status == "failed" and (s.tail or s.partial)]
        for state in failed:
            what = "first errors and last output" if state.errors and len(
                state.excerpt()) > TAIL_LINES else "last output"
            self.console.print(f"[bold red]── {state.label}: {what} ──[/]")
            for line in state.excerpt():
                self.console.print(line, markup=False, highlight=False)
        style = {"complete": "bold green", "failed": "bold red",
                 "interrupted": "bold yellow"}.get(record["status"], "bold")
        self.console.print(summary(record), style=style, markup=False, highlight=False)


def title(record: dict[str, Any]) -> str:
    ref = (record.get("ref") or "").removeprefix("refs/heads/")
    where = f"{(record.get('sha') or '')[:10]}" + (f" ({ref})" if ref else "")
    if record.get("snapshot"):
        where += " + uncommitted changes"
    return f"{record['repo']} @ {where} · run {record['run_id']}"


def summary(record: dict[str, Any]) -> str:
    """The closing line(s) of a run: status, counts, time, id, and what to do next."""
    steps = record.get("steps", [])
    ok = sum(1 for s in steps if s["status"] == "complete")
    took = f" in {record['duration_s']:.2f}s" if record.get("duration_s") is not None else ""
    rid, status = record["run_id"], record["status"]
    said_status = said(status, waiting_for=record.get("waiting_for"))
    head = f"run {rid} {said_status}{took}: {ok}/{len(steps)} steps complete"
    lines = [head]
    error = record.get("error")
    # A rejection says who and why on its own line, below.
    if status == "failed" and error and error.get("type") != "Rejected":
        from ci_runner.errors import error_lines  # with the pipeline's line, when its own

        lines.extend(error_lines(error))
        lines.append(f"logs: ci-runner logs {rid}")
    for approval in record.get("approvals") or []:
        comment = f": {approval['comment']}" if approval.get("comment") else ""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(approval["at"]))
        at = f" at step {approval['step']!r}" if approval.get("step") else ""
        lines.append(f"{decision_word(approval['decision'])} by {approval['by']}{at}"
                     f" ({when}){comment}")
    selection = record.get("selection") or {}
    for name in selection.get("unreached") or []:
        option = "--only" if name in (selection.get("only") or ()) else "--skip"
        lines.append(f"{option} {name}: no step named {name!r} was reached")
    if record.get("orphaned"):
        lines.append(f"its runner is gone (killed?): ci-runner resume {rid} takes it over")
    if status in WAITING:
        for wait in record.get("waits") or []:
            if wait.get("approval"):
                message = f" ({wait['message']})" if wait.get("message") else ""
                lines.append(
                    f"waiting for approval at step {wait['step']!r}{message}: "
                    f"ci-runner approve {rid} [--comment TEXT], or ci-runner reject {rid}"
                )
            elif "event_type" in wait:
                lines.append(
                    f"waiting for event {wait['event_type']!r} at step {wait['step']!r}: "
                    f"ci-runner send-event {rid} {wait['event_type']}"
                )
            elif "sleep_until" in wait:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wait["sleep_until"]))
                lines.append(f"sleeping at step {wait['step']!r} until {when}: "
                             f"ci-runner resume {rid} wakes it then")
    return "\n".join(lines)


def _message(event: dict[str, Any]) -> str:
    error = event.get("error") or {}
    return str(error.get("message", "")) if isinstance(error, dict) else ""


def make_view(*, json_mode: bool) -> RunView:
    if json_mode:
        return RunView()
    if sys.stdout.isatty():
        return LiveView()
    return PlainView()
