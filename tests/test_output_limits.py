"""A step's output, however big and however long its lines, costs bounded memory and
work in proportion to its size, and its log file stops growing at a cap.

Time is never asserted (the machine is shared and noisy): the bounds are on what
can be counted, the memory Python allocated (tracemalloc), what the masker holds
back, the size of each piece the sink gets, and the size of real log files.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from ci_runner.dispatch.steplog import DEFAULT_LOG_CAP, StepLog
from ci_runner.executors import MASK, Masker
from ci_runner.executors.output import SINK_CHUNK, TAIL_CHARS, MaskedOutput
from tests.conftest import Result

CHUNK = 64 * 1024
SECRETS = ["hunter2-correct-horse", "ghp_0123456789abcdefABCDEF"]


class _Counting:
    """A sink that keeps nothing: counts calls and characters, notes the largest call."""

    def __init__(self) -> None:
        self.calls = 0
        self.chars = 0
        self.largest = 0
        self.masks = 0
        self.last = ""

    def __call__(self, text: str) -> None:
        self.calls += 1
        self.chars += len(text)
        self.largest = max(self.largest, len(text))
        self.masks += text.count(MASK)
        self.last = text


class _Line:
    """What feeding one long line did: the sink, the output, the masker, how many
    secrets were planted and how many characters their masks replaced, and the peak
    of Python memory while feeding."""

    def __init__(self, megabytes: int) -> None:
        filler = b"x" * CHUNK
        plain = SECRETS[0].encode()
        encoded = base64.b64encode(SECRETS[1].encode())
        # Two chunks of the filler's size with a secret (or its base64) cut between them.
        splits = [
            (filler[: CHUNK - 7] + plain[:7], plain[7:] + filler[len(plain) - 7:]),
            (filler[: CHUNK - 5] + encoded[:5], encoded[5:] + filler[len(encoded) - 5:]),
        ]
        self.sink = _Counting()
        self.masker = Masker(SECRETS)
        self.output = MaskedOutput(self.masker, self.sink)
        self.planted = self.hidden = 0
        tracemalloc.start()
        try:
            total = megabytes * 1024 * 1024 // CHUNK
            index = 0
            while index < total:
                chunks: tuple[bytes, ...] = (filler,)
                if index % 16 == 0 and index + 1 < total:
                    chunks = splits[index // 16 % 2]
                    self.planted += 1
                    self.hidden += len(plain if index // 16 % 2 == 0 else encoded) - len(MASK)
                for chunk in chunks:
                    self.output.feed(chunk)
                    assert self.masker.held < self.masker.longest
                    index += 1
            self.output.close()
            self.peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


def test_one_long_line_is_processed_in_bounded_memory() -> None:
    # 5 and 50 MiB without a newline, 64 KiB at a time, with two secrets to mask: a
    # secret straddles a chunk boundary every 32 chunks, its base64 every 32 more.
    small, big = _Line(5), _Line(50)
    for megabytes, line in ((5, small), (50, big)):
        # Every occurrence masked, nothing else lost or repeated.
        assert line.sink.masks == line.planted > 0
        assert line.sink.chars == megabytes * 1024 * 1024 - line.hidden
        assert line.sink.largest <= SINK_CHUNK
        assert line.output.tail() == "x" * TAIL_CHARS
        # A few chunks' worth, never the line.
        assert line.peak < 1024 * 1024, line.peak
    # Ten times the output: the same memory, ten times the sink calls (nothing re-sent).
    assert big.peak < 2 * small.peak + 64 * 1024
    assert big.sink.calls <= 10 * small.sink.calls + 2


@pytest.mark.parametrize("chunk", [1, 7, 1000, CHUNK])
def test_the_masker_holds_back_less_than_its_longest_pattern(chunk: int) -> None:
    # Adversarial: the output is an endless prefix of the secret that never completes.
    secret = "a" * 40 + "b"
    masker = Masker([secret])
    text = ("a" * 39 + "c") * (20_000 // 40) + "a" * 40 + "b" + "a" * 39
    out = []
    for start in range(0, len(text), chunk):
        out.append(masker.feed(text[start:start + chunk]))
        assert masker.held < masker.longest
    streamed = "".join(out) + masker.flush()
    assert streamed == Masker([secret]).mask(text)
    assert streamed.count(MASK) == 1
    assert secret not in streamed


def test_the_sink_gets_bounded_pieces_of_one_big_write() -> None:
    pieces: list[str] = []
    output = MaskedOutput(Masker([]), pieces.append)
    text = "".join(chr(ord("a") + n % 26) for n in range(3 * SINK_CHUNK + 123))
    output.write(text)
    output.close()
    assert "".join(pieces) == text
    assert [len(p) for p in pieces] == [SINK_CHUNK] * 3 + [123]


def test_the_tail_of_many_tiny_writes_is_the_last_lines() -> None:
    lines = [f"line {n} " + "y" * (n % 300) for n in range(3000)]
    text = "\n".join(lines) + "\n"
    output = MaskedOutput(Masker(["line 2999"]), lambda _text: None)
    for start in range(0, len(text), 3):
        output.write(text[start:start + 3])
    output.close()
    expected = "\n".join(Masker(["line 2999"]).mask(text)[-(TAIL_CHARS + 1):]
                         .splitlines()[-20:])[-TAIL_CHARS:]
    assert output.tail() == expected
    assert output.tail().endswith(f"{MASK} " + "y" * (2999 % 300))


# The step log's cap, on real files.

def _marker(cap: str) -> str:
    return (f"--- output truncated: this step wrote more than {cap}; the rest was dropped"
            " (its last lines are in the step's result) ---\n")


def test_log_stops_at_its_cap_with_one_marker_and_keeps_the_notes(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "run" / "big.log"
    with StepLog(path, max_bytes=1000) as log:
        log.note("--- attempt 1: spam (12:00:00)\n")
        for n in range(40):
            log.write(f"{n:03d} " + "z" * 95 + "\n")  # 100 bytes a line
        assert log.truncated
        log.note("--- exit code 0 after 1.000s\n")
    text = path.read_text(encoding="utf-8")
    head, marker_and_notes = text.split("\n--- output truncated", 1)
    assert len(head.encode()) == 1000  # cut mid-line: the marker goes on a line of its own
    assert head.startswith("--- attempt 1: spam (12:00:00)\n000 ")
    assert "\n--- output truncated" + marker_and_notes == "\n" + _marker("1000 bytes") + (
        "--- exit code 0 after 1.000s\n")
    assert log.dropped_bytes == 40 * 100 - (1000 - len("--- attempt 1: spam (12:00:00)\n"))
    assert text.count("output truncated") == 1


def test_log_cut_never_splits_a_character(tmp_path: Path) -> None:
    path = tmp_path / "step.log"
    with StepLog(path, max_bytes=10) as log:
        log.write("aaaaaaaaa€€€")  # 9 bytes, then 3-byte characters: the 10th byte is one's
    data = path.read_bytes()
    assert data.decode("utf-8") == "aaaaaaaaa\n" + _marker("10 bytes")
    assert log.dropped_bytes == 9


def test_default_cap_is_64_mib_and_counts_what_the_file_holds(tmp_path: Path) -> None:
    path = tmp_path / "step.log"
    # An earlier attempt filled the file (a sparse file: no disk used).
    with path.open("wb") as file:
        file.truncate(DEFAULT_LOG_CAP - 5)
    with StepLog(path) as log:
        log.note("--- attempt 2: again\n")
        log.write("more output than fits\n")
        log.write("and more\n")
        log.note("--- exit code 1 after 0.100s\n")
    assert DEFAULT_LOG_CAP == 64 * 1024 * 1024
    assert log.truncated
    with path.open("rb") as file:
        file.seek(DEFAULT_LOG_CAP - 5)
        rest = file.read().decode()
    # The notes go in even past the cap; the output does not.
    assert rest == "--- attempt 2: again\n" + _marker("64.0 MiB") + (
        "--- exit code 1 after 0.100s\n")
    assert log.dropped_bytes == len("more output than fits\nand more\n")


def test_no_cap_and_a_silent_step(tmp_path: Path) -> None:
    with StepLog(tmp_path / "free.log", max_bytes=None) as log:
        log.write("x" * 5000)
    assert (tmp_path / "free.log").stat().st_size == 5000
    assert not log.truncated
    assert log.dropped_bytes == 0
    with StepLog(tmp_path / "quiet.log", max_bytes=10) as log:
        log.note("--- attempt 1: true\n")
        log.note("--- exit code 0\n")
    assert not (tmp_path / "quiet.log").exists()
    with pytest.raises(ValueError, match="cap"):
        StepLog(tmp_path / "bad.log", max_bytes=-1)


PIPELINE = '''
from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        return await step.run("flood", event.payload["cmd"])
'''


@pytest.mark.slow
def test_a_step_that_floods_its_log_is_capped_and_keeps_running(
    cli: Callable[..., Result], repo_with: Callable[..., Path], home: Path,
) -> None:
    repo = repo_with(PIPELINE)
    flood = DEFAULT_LOG_CAP + 4 * 1024 * 1024
    cmd = f"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {flood}; echo; echo the-end"
    done = cli("run", "--json", "-C", str(repo), "-p", f"cmd={cmd}", timeout=300)
    assert done.code == 0, done.err
    record = done.json()
    run_id = record["run_id"]
    log = home / "logs" / run_id / "flood.log"
    size = log.stat().st_size
    assert DEFAULT_LOG_CAP <= size < DEFAULT_LOG_CAP + 1024
    with log.open("rb") as file:
        file.seek(DEFAULT_LOG_CAP - 100)
        end = file.read().decode()
    assert _marker("64.0 MiB") in end
    assert end.endswith("s\n") and "--- exit code 0 after" in end
    assert "the-end" not in end
    # The step's result keeps the output's end, the part the log dropped.
    with sqlite3.connect(home / "ci-runner.db") as db:
        (result,) = db.execute("SELECT result FROM steps WHERE instance_id = ? AND name = ?",
                               (run_id, "flood")).fetchone()
    assert json.loads(result)["output_tail"].endswith("\nthe-end")
    # The run shows it: the step's result says its log stopped at the cap, and how much.
    truncated = json.loads(result)["log_truncated"]
    assert truncated["cap_bytes"] == 64 << 20 and truncated["dropped_bytes"] > 0


def test_a_steps_own_log_cap(cli, home, tmp_path):
    """step.run(log_cap=N) caps that step's log at N bytes; the run shows it."""
    from tests.gitrepos import make_repo

    repo = make_repo(tmp_path / "cap", {".ci/pipeline.py": """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("chatty", "yes line | head -n 20000; echo done", log_cap=4096)
"""})
    done = cli("run", "-C", str(repo), "--json")
    assert done.code == 0, done.err
    run_id = done.json()["run_id"]
    log = home / "logs" / run_id / "chatty.log"
    assert log.stat().st_size < 4096 + 1024
    assert "--- output truncated" in log.read_text()
    with sqlite3.connect(home / "ci-runner.db") as db:
        (result,) = db.execute("SELECT result FROM steps WHERE instance_id = ?",
                               (run_id,)).fetchone()
    assert json.loads(result)["log_truncated"]["cap_bytes"] == 4096
    assert json.loads(result)["output_tail"].endswith("done")
