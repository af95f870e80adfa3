"""A pipeline's own errors, told truthfully, through the real CLI on real repositories.

An exception in ``run()`` is stored and shown with its type, message and a short
traceback that names the user's ``<repo>/.ci/pipeline.py:LINE`` (the code runs from a
temporary worktree, whose path is never shown); an import or syntax error is printed
once, naming the user's file; a step called without ``await`` fails the run naming
the step, while the legitimate ways to run steps together pass. Each behaviour is
checked with the sandbox off (a fork of the CLI) and in bubblewrap and Landlock (a fresh
interpreter, in namespaces of its own or not), as the pipeline's output and tracebacks
travel differently.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Result
from tests.terminal import in_terminal
from tests.test_cli_e2e import assert_usage_error, no_traceback, pipeline, step_names

Cli = Callable[..., Result]
RepoWith = Callable[..., Path]
MODES = ["off", "bwrap", "landlock"]
ENDED_BADLY = ("failed", "errored")  # the run's status, in the user's words or the engine's


def sandbox(mode: str) -> tuple[str, ...]:
    """``--sandbox MODE``; a sandbox is required where it can run (always in CI)."""
    if mode != "off":
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


DEEP_IN_A_LIBRARY = pipeline("""
    import copy
    from ci_runner import Pipeline

    class Stubborn:
        def __deepcopy__(self, memo):
            raise ValueError("cannot copy")

    class CI(Pipeline):
        async def run(self, event, step):
            nested = Stubborn()
            for _ in range(30):
                nested = [nested]
            copy.deepcopy(nested)
""")


def test_a_librarys_depths_do_not_push_the_users_lines_out_of_the_short_form(
    cli: Cli, repo_with: RepoWith,
) -> None:
    repo = repo_with(DEEP_IN_A_LIBRARY)

    error = cli("run", "--json", cwd=repo).json()["error"]

    frames = error["traceback"]
    assert len(frames) <= 10
    assert (frames[0]["file"], frames[0]["line"]) == (str(repo.resolve() / ".ci/pipeline.py"), 13)
    assert (frames[-1]["line"], frames[-1]["function"]) == (6, "__deepcopy__")
    assert all(f["file"].endswith("copy.py") for f in frames[1:-1])
    assert error["location"] == user_file(repo, 6)


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
    shown = cli("show", first.json()["run_id"]).out
    assert shown.count(user_file(missing, 2)) == 1, shown  # in the message, not again
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
    assert "error:" not in screen.out  # said once, on stderr
    # Python would warn about its coroutine; the pipeline's output names the step instead.
    assert (f"  (pipeline) {user_file(repo, 7)}: RuntimeWarning: step 'x' was never awaited"
            " (missing await?)") in screen.out.splitlines()


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



def test_a_call_kept_across_an_approval_is_awaited_after_it_without_a_word(
    cli: Cli, repo_with: RepoWith, home: Path,
) -> None:
    repo = repo_with(pipeline("""
        from ci_runner import Pipeline

        class CI(Pipeline):
            async def run(self, event, step):
                later = step.run("after", ["echo", "after approval"])
                await step.wait_for_approval("gate")
                await later
    """))

    waiting = cli("run", "--json", cwd=repo)
    run_id = waiting.json()["run_id"]
    approved = cli("approve", run_id, "--json")

    assert waiting.code == 3, (waiting.out, waiting.err)
    assert approved.code == 0, (approved.out, approved.err)
    assert step_names(approved.json()) == ["gate", "after"]
    # Parking the run dropped the call; the replay made it again and awaited it.
    assert "never awaited" not in (home / "logs" / run_id / "pipeline.log").read_text()


# -- the pipeline's own output ---------------------------------------------------------

SECRET = "tok-51d0c1a7e2"

TALKS = pipeline("""
    import warnings
    from ci_runner import Pipeline

    class CI(Pipeline):
        async def run(self, event, step):
            await step.run("write", ["sh", "-c", 'printf %s "$TOKEN" > tok'], secrets=["TOKEN"])
            print("the pipeline says", open("tok").read())
            warnings.warn("mind the gap", UserWarning)
            await step.run("pipeline", ["echo", "a step named like the pipeline's log"])
            print("no newline at the end", end="")
""")


def secrets_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets.yaml"
    path.write_text(f"TOKEN: {SECRET}\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("mode", MODES)
def test_prints_and_warnings_are_shown_as_the_pipelines_and_stored_masked(
    cli: Cli, repo_with: RepoWith, home: Path, tmp_path: Path, mode: str,
) -> None:
    repo = repo_with(TALKS)

    done = cli("run", *sandbox(mode), "--secrets-file", str(secrets_file(tmp_path)), cwd=repo)

    assert done.code == 0, (done.out, done.err)
    lines = done.out.splitlines()
    assert "  (pipeline) the pipeline says ***" in lines
    assert f"  (pipeline) {user_file(repo, 8)}: UserWarning: mind the gap" in lines
    assert "  (pipeline) no newline at the end" in lines
    assert "  [pipeline] a step named like the pipeline's log" in lines  # a step's: [name]
    assert SECRET not in done.out + done.err
    run_id = done.out.split(" · run ")[1].split()[0]
    stored = (home / "logs" / run_id / "pipeline.log").read_text()
    assert stored.splitlines() == [
        "the pipeline says ***",
        f"{user_file(repo, 8)}: UserWarning: mind the gap",
        '  warnings.warn("mind the gap", UserWarning)',
        "no newline at the end",
    ]
    step_logs = [p for p in (home / "logs" / run_id).iterdir() if p.name != "pipeline.log"]
    assert any("a step named like" in p.read_text() for p in step_logs)
    assert not worktree_named(done.out + stored, home)


@pytest.mark.parametrize("mode", MODES)
def test_the_live_view_shows_the_pipelines_lines_and_its_traceback(
    cli: Cli, repo_with: RepoWith, home: Path, tmp_path: Path, mode: str,
) -> None:
    from tests.conftest import ROOT
    from tests.gitrepos import ISOLATED_GIT_ENV

    sandbox(mode)
    repo = repo_with(pipeline("""
        from ci_runner import Pipeline

        class CI(Pipeline):
            async def run(self, event, step):
                print("hello from run()")
                await step.run("one", ["echo", "from a step"])
                return {}["nope"]
    """))
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT)}

    _, screen = in_terminal(["run", "--sandbox", mode], env, cwd=repo, columns=200)

    assert "(pipeline) hello from run()" in screen, screen
    assert "[pipeline]" not in screen
    assert "error: KeyError: 'nope'" in screen, screen
    assert f"{user_file(repo, 7)} in run: return {{}}[\"nope\"]" in screen, screen
    assert screen.count("'nope'") == 1, screen
    assert not worktree_named(screen, home)


# -- runs of the webhook server ----------------------------------------------------------

SERVED = pipeline("""
    import os
    from ci_runner import Pipeline

    class CI(Pipeline):
        async def run(self, event, step):
            print("served", event.payload["forge"])
            await step.run("hello", ["true"])
            if os.path.exists("FORGET"):
                step.run("forgotten", ["true"])
                await step.run("after", ["true"])
            return [][0]
""")


def test_a_server_run_stores_the_same_error_record(tmp_path: Path) -> None:
    from tests import serverkit as kit
    from tests.gitrepos import commit, git, make_repo

    source = make_repo(tmp_path / "source", {".ci/pipeline.py": SERVED})
    crash = git(source, "rev-parse", "HEAD")
    forget = commit(source, {"FORGET": "1"}, "forget an await")
    config = kit.write_config(tmp_path / "ci-runner.yml", [
        kit.repo_entry("github", "Codertocat/Hello-World", source)])
    home = tmp_path / "home"
    server = kit.Server(config, home)
    try:
        server.start()
        for sha in (crash, forget):
            answer = server.post("github", kit.github_push(sha, branch="main"), event="push")
            assert answer.status_code in (200, 201, 202), answer.text
        found = kit.wait_for(kit.settled(home, 2), timeout=90, what="both runs to end")
        records = {r["meta"]["sha"]: server.api("GET", f"/api/runs/{r['id']}").json()
                   for r in found}
    finally:
        server.stop()
        server.close()

    crashed, forgot = records[crash]["error"], records[forget]["error"]
    # A server's runs come from its mirror, which has no checkout: the file in the repo.
    assert crashed["type"] == "IndexError"
    assert crashed["location"] == ".ci/pipeline.py:11"
    assert crashed["traceback"] == [{"file": ".ci/pipeline.py", "line": 11,
                                     "function": "run", "code": "return [][0]"}]
    assert forgot["message"] == "step 'forgotten' was never awaited (missing await?)"
    assert forgot["location"] == ".ci/pipeline.py:9"
    assert [s["name"] for s in records[forget]["steps"]] == ["hello"]
    for record in records.values():
        assert "served github" in (
            home / "logs" / record["run_id"] / "pipeline.log").read_text()
