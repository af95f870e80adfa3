"""A pipeline's own errors, told truthfully, through the real CLI on real repositories.

An exception in ``run()`` is stored and shown with its type, message and a short
traceback that names the user's ``<repo>/.ci/pipeline.py:LINE`` (the code runs from a
temporary worktree, whose path is never shown); an import or syntax error is printed
once, naming the user's file; a step called without ``await`` fails the run naming
the step, while the legitimate ways to run steps together pass. Each behaviour is
checked with the sandbox off and in bubblewrap, where the pipeline's output and
tracebacks travel through another process tree.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Result
from tests.test_cli_e2e import assert_usage_error, no_traceback, pipeline, step_names

Cli = Callable[..., Result]
RepoWith = Callable[..., Path]
MODES = ["off", "bwrap"]
ENDED_BADLY = ("failed", "errored")  # the run's status, in the user's words or the engine's


def sandbox(mode: str) -> tuple[str, ...]:
    """``--sandbox MODE``; bubblewrap is required where it can run (always in CI)."""
    if mode == "bwrap":
        from tests.test_isolation_cli import _require

        _require(mode)
    return ("--sandbox", mode)


def user_file(repo: Path, line: int, name: str = ".ci/pipeline.py") -> str:
    """How an error names a line of the user's file: their own repository's path."""
    return f"{repo.resolve() / name}:{line}"


def worktree_named(text: str, home: Path) -> bool:
    return str(home / "worktrees") in text


# Line numbers matter: the tests name them.
CRASHES = pipeline("""
    from ci_runner import Pipeline

    def helper(xs):
        return xs[3]

    class CI(Pipeline):
        async def run(self, event, step):
            await step.run("one", ["echo", "hi"])
            return helper([1])
""")


@pytest.mark.parametrize("mode", MODES)
def test_an_exception_in_run_is_stored_with_its_type_message_and_the_users_lines(
    cli: Cli, repo_with: RepoWith, home: Path, mode: str,
) -> None:
    repo = repo_with(CRASHES)

    done = cli("run", "--json", *sandbox(mode), cwd=repo)

    assert done.code == 1, (done.out, done.err)
    no_traceback(done)
    error = done.json()["error"]
    assert error["type"] == "IndexError"
    assert error["message"] == "list index out of range"
    assert error["location"] == user_file(repo, 4)
    assert [(f["file"], f["line"], f["function"], f["code"]) for f in error["traceback"]] == [
        (str(repo.resolve() / ".ci/pipeline.py"), 9, "run", "return helper([1])"),
        (str(repo.resolve() / ".ci/pipeline.py"), 4, "helper", "return xs[3]"),
    ]
    shown = cli("show", done.json()["run_id"], "--json").json()
    assert shown["error"] == error
    assert not worktree_named(json.dumps(error) + done.err, home)


@pytest.mark.parametrize("mode", MODES)
def test_the_final_screen_and_show_give_the_short_traceback(
    cli: Cli, repo_with: RepoWith, home: Path, mode: str,
) -> None:
    repo = repo_with(CRASHES)

    done = cli("run", *sandbox(mode), cwd=repo)
    run_id = done.out.split(" · run ")[1].split()[0]
    shown = cli("show", run_id)

    assert done.code == 1, (done.out, done.err)
    for text in (done.out, shown.out):
        lines = text.splitlines()
        at = lines.index("error: IndexError: list index out of range")
        assert lines[at + 1:at + 3] == [
            f"  {user_file(repo, 9)} in run: return helper([1])",
            f"  {user_file(repo, 4)} in helper: return xs[3]",
        ], text
        assert "ci_runner" not in text and not worktree_named(text, home)
    assert done.out.count("list index out of range") == 1  # once, not also on stderr
    assert "list index out of range" not in done.err


A_STEP_OF_ITS_OWN = pipeline("""
    from ci_runner import Pipeline

    def compute():
        return {}["missing"]

    class CI(Pipeline):
        async def run(self, event, step):
            await step.do("compute", compute)
""")


def test_an_exception_in_a_step_do_names_the_line_of_its_function(
    cli: Cli, repo_with: RepoWith,
) -> None:
    repo = repo_with(A_STEP_OF_ITS_OWN)

    done = cli("run", "--json", cwd=repo)

    assert done.code == 1, (done.out, done.err)
    error = done.json()["error"]
    assert error["fields"]["type"] == "KeyError"
    assert error["location"] == user_file(repo, 4)
    assert [f["line"] for f in error["traceback"]] == [8, 4]
    screen = cli("run", cwd=repo).out
    assert "error: KeyError: 'missing'" in screen
    assert f"  {user_file(repo, 4)} in compute: return {{}}[\"missing\"]" in screen


# -- import and syntax errors ------------------------------------------------------------

UNCLOSED = pipeline("""
    from ci_runner import Pipeline

    class CI(Pipeline):
        async def run(self, event, step):
            await step.run("one", ["echo", "hi"]
""")


@pytest.mark.parametrize("mode", MODES)
def test_a_syntax_error_is_printed_once_naming_the_users_file(
    cli: Cli, repo_with: RepoWith, home: Path, mode: str,
) -> None:
    repo = repo_with(UNCLOSED)

    plain = cli("run", *sandbox(mode), cwd=repo)
    as_json = cli("run", "--json", *sandbox(mode), cwd=repo)

    line = assert_usage_error(plain, "SyntaxError", user_file(repo, 5))
    assert (plain.out + plain.err).count("was never closed") == 1, (plain.out, plain.err)
    assert line in plain.err
    assert_usage_error(as_json, "SyntaxError", user_file(repo, 5))
    error = as_json.json()["error"]
    assert error["location"] == user_file(repo, 5)
    assert error["traceback"][-1]["code"] == 'await step.run("one", ["echo", "hi"]'
    assert not worktree_named(plain.out + plain.err + json.dumps(error), home)


def test_import_errors_in_the_pipeline_or_a_helper_name_the_users_files(
    cli: Cli, repo_with: RepoWith, home: Path,
) -> None:
    missing = repo_with("from ci_runner import Pipeline\nimport no_such_module_here\n",
                        name="missing")
    helper = repo_with("from ci_runner import Pipeline\nimport helpers\n",
                       files={".ci/helpers.py": "X = 1\ndef broken(:\n    pass\n"},
                       name="helper")

    first = cli("run", "--json", cwd=missing)
    second = cli("run", "--json", cwd=helper)

    assert_usage_error(first, "ModuleNotFoundError", user_file(missing, 2))
    assert first.json()["error"]["location"] == user_file(missing, 2)
    assert_usage_error(second, "SyntaxError", user_file(helper, 2, ".ci/helpers.py"))
    for done in (first, second):
        assert not worktree_named(json.dumps(done.json()["error"]) + done.err, home)


# -- a step called without await -------------------------------------------------------

FORGETS = pipeline("""
    from pathlib import Path
    from ci_runner import Pipeline

    class CI(Pipeline):
        async def run(self, event, step):
            await step.run("first", ["echo", "one"])
            step.run("x", ["sh", "-c", "echo ran > " + __MARK__ + ".x"])
            await step.do("deploy", lambda: Path(__MARK__ + ".deploy").write_text("ran"))
""")


@pytest.mark.parametrize("mode", MODES)
def test_a_step_never_awaited_fails_the_run_naming_it_and_nothing_after_it_runs(
    cli: Cli, repo_with: RepoWith, tmp_path: Path, mode: str,
) -> None:
    mark = str(tmp_path / "mark")
    repo = repo_with(FORGETS.replace("__MARK__", repr(mark)))

    done = cli("run", "--json", *sandbox(mode), cwd=repo)

    assert done.code == 2, (done.out, done.err)  # a misuse of the API, like a bad option
    record = done.json()
    assert record["status"] in ENDED_BADLY
    assert record["error"]["message"] == "step 'x' was never awaited (missing await?)"
    assert record["error"]["location"] == user_file(repo, 7)  # the line without await
    assert step_names(record) == ["first"]
    assert not Path(mark + ".x").exists() and not Path(mark + ".deploy").exists()
    screen = cli("run", *sandbox(mode), cwd=repo)
    assert_usage_error(screen, f"error: step 'x' was never awaited (missing await?) (at"
                               f" {user_file(repo, 7)})")
    assert "never awaited" not in screen.out


def test_a_step_forgotten_last_or_left_in_an_unawaited_gather_fails_the_run(
    cli: Cli, repo_with: RepoWith,
) -> None:
    last = repo_with(pipeline("""
        from ci_runner import Pipeline

        class CI(Pipeline):
            async def run(self, event, step):
                await step.run("first", ["true"])
                step.do("last", lambda: 1)
    """), name="last")
    gathered = repo_with(pipeline("""
        import asyncio
        from ci_runner import Pipeline

        class CI(Pipeline):
            async def run(self, event, step):
                asyncio.gather(step.run("slow", ["sleep", "5"]))
                return "done"
    """), name="gathered")

    forgot, left = cli("run", "--json", cwd=last), cli("run", "--json", cwd=gathered)

    assert forgot.code == 2 and forgot.json()["status"] in ENDED_BADLY, forgot.out
    assert forgot.json()["error"]["message"] == "step 'last' was never awaited (missing await?)"
    assert left.code == 2 and left.json()["status"] in ENDED_BADLY, left.out
    # Its task had not begun when run() returned (or it had: "still running").
    assert left.json()["error"]["message"].startswith("step 'slow' was ")
    assert "await" in left.json()["error"]["message"]
    assert left.json()["error"]["location"] == user_file(gathered, 6)


LEGIT = pipeline("""
    import asyncio
    from ci_runner import Pipeline

    class CI(Pipeline):
        async def run(self, event, step):
            a = step.run("a", ["echo", "a"])
            b = step.do("b", lambda: "b")
            got = list(await asyncio.gather(a, b))
            got += await step.parallel(step.run("c", ["true"]), step.do("d", lambda: "d"))
            task = asyncio.create_task(step.run("e", ["true"]))
            later = step.do("f", lambda: "f")
            await step.run("g", ["true"])
            await task
            got.append(await later)
            got += await asyncio.gather(*[step.do(f"n{i}", lambda i=i: i) for i in range(3)])
            got.append(await asyncio.wait_for(step.do("w", lambda: "w"), 60))
            if hasattr(asyncio, "TaskGroup"):  # Python 3.11+
                async with asyncio.TaskGroup() as group:
                    group.create_task(step.run("t1", ["true"]))
                    group.create_task(step.sleep("t2", 0))
            return [g["exit_code"] if isinstance(g, dict) else g for g in got]
""")

SYNC = pipeline("""
    from ci_runner import Pipeline

    class CI(Pipeline):
        def run(self, event, step):
            one = step.run("one", ["echo", "1"])
            both = step.parallel(lambda: step.do("two", lambda: 2),
                                 lambda: step.run("three", ["true"]))
            return [one["exit_code"], both[0], both[1]["exit_code"]]
""")


@pytest.mark.parametrize("mode", MODES)
def test_gather_parallel_tasks_and_plain_def_runs_do_not_trip_it(
    cli: Cli, repo_with: RepoWith, mode: str,
) -> None:
    legit, sync = repo_with(LEGIT, name="legit"), repo_with(SYNC, name="sync")

    done = cli("run", "--json", *sandbox(mode), cwd=legit)
    plain = cli("run", "--json", *sandbox(mode), cwd=sync)

    assert done.code == 0, (done.out, done.err)
    record = done.json()
    assert record["status"] == "complete"
    task_group = ["t1", "t2"] if sys.version_info >= (3, 11) else []
    assert sorted(step_names(record)) == sorted(
        ["a", "b", "c", "d", "e", "f", "g", "n0", "n1", "n2", "w", *task_group])
    assert plain.code == 0, (plain.out, plain.err)
    assert sorted(step_names(plain.json())) == ["one", "three", "two"]

