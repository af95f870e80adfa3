"""The real `ci-runner` CLI refusing bad input: usage and configuration errors.

Every one must exit 2 with exactly one `error: ...` line on stderr and no traceback
(`assert_usage_error`); a pipeline that fails to load also leaves an errored run
record behind. The happy paths and run failures are in test_cli_e2e.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gitrepos import commit, git, make_repo
from tests.test_cli_e2e import (
    GREEN,
    SHOW_FILES,
    Cli,
    RepoWith,
    assert_usage_error,
    at_once,
    no_git_above,
    no_traceback,
    pipeline,
    step_names,
)

# -- where the run would start ---------------------------------------------------------


def test_not_a_git_repository(cli: Cli, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    outside_git = no_git_above(tmp_path)

    here, missing = at_once(
        lambda: cli("run", cwd=plain, env=outside_git),
        lambda: cli("run", "-C", str(tmp_path / "nope"), cwd=tmp_path, env=outside_git),
    )

    assert_usage_error(here, "git")
    assert_usage_error(missing, "does not exist")
    assert cli("runs", "--json").json() == []


def test_no_pipeline_file(cli: Cli, tmp_path: Path, home: Path) -> None:
    repo = make_repo(tmp_path / "bare", {"README.md": "hi\n"})

    done = cli("run", cwd=repo)

    assert_usage_error(done, ".ci/pipeline.py", "init")
    assert cli("runs", "--json").json() == []  # nothing recorded
    assert not any((home / "worktrees").glob("*"))


def test_unknown_rev_and_empty_repo(cli: Cli, repo_with: RepoWith, tmp_path: Path) -> None:
    repo = repo_with(pipeline(GREEN))

    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")

    branch, ancestor, unborn = at_once(
        lambda: cli("run", "--rev", "no-such-branch", cwd=repo),
        lambda: cli("run", "--rev", "HEAD~5", cwd=repo),
        lambda: cli("run", cwd=empty),
    )

    assert_usage_error(branch, "no-such-branch")
    assert_usage_error(ancestor, "HEAD~5")
    assert_usage_error(unborn, "no commits")
    assert cli("runs", "--json").json() == []


def test_include_uncommitted_with_rev_is_refused(cli: Cli, repo_with: RepoWith) -> None:
    repo = repo_with(pipeline(SHOW_FILES), {"data.txt": "one\n"})
    git(repo, "tag", "v1")
    commit(repo, {"data.txt": "two\n"}, "two")

    for rev in ("v1", "no-such-rev"):
        assert_usage_error(cli("run", "--include-uncommitted", "--rev", rev, cwd=repo),
                           "--rev")
    assert cli("runs", "--json").json() == []


# -- a pipeline that does not load -----------------------------------------------------


BROKEN = {
    "syntax-error": ("from ci_runner import Pipeline\nclass CI(Pipeline)\n    pass\n",
                     ("SyntaxError", "pipeline.py")),
    "import-error": ("import no_such_module_for_e2e\n", ("no_such_module_for_e2e",)),
    "raises-at-import": ("from ci_runner import Pipeline\nraise RuntimeError('top boom')\n",
                         ("top boom",)),
    "no-subclass": ("from ci_runner import Pipeline\n\nclass NotAPipeline:\n    pass\n",
                    ("Pipeline",)),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_pipeline_is_a_usage_error_with_a_record(
    cli: Cli, repo_with: RepoWith, case: str
) -> None:
    source, needles = BROKEN[case]
    repo = repo_with(source)

    done = cli("run", "--json", cwd=repo)

    assert done.code == 2, (done.out, done.err)
    no_traceback(done)
    record = done.json()
    assert record["status"] == "failed"
    assert record["error"]["type"] in ("PipelineLoadError", "PipelineNotFound")
    assert all(n in record["error"]["message"] for n in needles), record["error"]
    assert cli("runs", "--json").json() == [record]
    assert not Path(record["workspace"]).exists()


def test_pipeline_import_error_points_at_the_pipeline_line(
    cli: Cli, repo_with: RepoWith
) -> None:
    in_library = "import json\nfrom ci_runner import Pipeline\n\nCONFIG = json.loads('{')\n"
    syntax = "from ci_runner import Pipeline\nclass CI(Pipeline)\n    pass\n"
    lib_repo = repo_with(in_library, name="lib")
    syntax_repo = repo_with(syntax, name="syntax")

    lib, bad_syntax = at_once(lambda: cli("run", "--json", cwd=lib_repo),
                              lambda: cli("run", "--json", cwd=syntax_repo))

    assert "pipeline.py:4" in lib.json()["error"]["message"]
    assert "<frozen" not in bad_syntax.json()["error"]["message"]
    assert "pipeline.py" in bad_syntax.json()["error"]["message"]


SEVERAL = """
from ci_runner import Pipeline

class Lint(Pipeline):
    async def run(self, event, step):
        await step.run("lint", ["echo", "linting"])

class Test(Pipeline):
    name = "tests"

    async def run(self, event, step):
        await step.run("test", ["echo", "testing"])
"""


def test_several_pipelines_need_pipeline_option(cli: Cli, repo_with: RepoWith) -> None:
    repo = repo_with(pipeline(SEVERAL))

    ambiguous, wrong, lint, tests = at_once(
        lambda: cli("run", "--json", cwd=repo),
        lambda: cli("run", "--pipeline", "deploy", "--json", cwd=repo),
        lambda: cli("run", "--pipeline", "Lint", "--json", cwd=repo),
        lambda: cli("run", "--pipeline", "tests", "--json", cwd=repo),
    )

    for done, needles in ((ambiguous, ("--pipeline", "Lint", "tests")),
                          (wrong, ("deploy", "Lint", "tests"))):
        assert done.code == 2, (done.out, done.err)
        no_traceback(done)
        message = done.json()["error"]["message"]
        assert all(n in message for n in needles), message
    assert lint.code == 0, lint.err
    assert step_names(lint.json()) == ["lint"]
    assert lint.json()["pipeline"] == "Lint"
    assert tests.code == 0, tests.err
    assert step_names(tests.json()) == ["test"]


def test_pipeline_load_errors_print_one_error_line_on_stderr(
    cli: Cli, repo_with: RepoWith
) -> None:
    cases = [(source, (), needles) for source, needles in BROKEN.values()]
    cases += [(pipeline(SEVERAL), (), ("--pipeline",)),
              (pipeline(SEVERAL), ("--pipeline", "deploy"), ("deploy",))]
    for i, (source, extra, needles) in enumerate(cases):
        repo = repo_with(source, name=f"broken{i}")
        for mode in ((), ("--json",)):
            assert_usage_error(cli("run", *extra, *mode, cwd=repo), *needles)


# -- options and run ids ---------------------------------------------------------------


def test_bad_options(cli: Cli, repo_with: RepoWith) -> None:
    repo = repo_with(pipeline(GREEN))

    novalue, novalue2, payload, event_type = at_once(
        lambda: cli("run", "--param", "novalue", cwd=repo),
        lambda: cli("run", "--param", "=value", cwd=repo),
        lambda: cli("send-event", "somerun", "ok", "--payload", "{not json"),
        lambda: cli("send-event", "somerun", "bad type!"),
    )

    assert_usage_error(novalue, "--param", "KEY=VALUE")
    assert_usage_error(novalue2, "--param", "KEY=VALUE")
    assert_usage_error(payload, "JSON")
    assert_usage_error(event_type, "event type")
    assert cli("runs", "--json").json() == []


def test_unknown_run(cli: Cli) -> None:
    calls = [("show", "nosuchrun"), ("show", "nosuchrun", "--json"), ("logs", "nosuchrun"),
             ("resume", "nosuchrun"), ("send-event", "nosuchrun", "approve")]

    results = at_once(*[lambda args=args: cli(*args) for args in calls])

    for result in results:
        assert_usage_error(result, "nosuchrun")


# -- secrets configuration -------------------------------------------------------------


SECRET_STEP = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("use", ["true"], secrets=[__NAME__])
"""


def test_secrets_file_open_to_others_is_a_usage_error(
    cli: Cli, repo_with: RepoWith, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text("TOKEN: abc-visible-value\n")
    secrets.chmod(0o644)
    repo = repo_with(pipeline(SECRET_STEP, name="TOKEN"))

    done = cli("run", "--secrets-file", str(secrets), cwd=repo)

    assert_usage_error(done, "chmod 600")


def test_secrets_file_that_does_not_exist_is_a_usage_error(
    cli: Cli, repo_with: RepoWith, tmp_path: Path
) -> None:
    repo = repo_with(pipeline(GREEN))

    done = cli("run", "--secrets-file", str(tmp_path / "no-such-secrets.yaml"), cwd=repo)

    assert_usage_error(done, "no-such-secrets.yaml")


def test_missing_secret_names_it(cli: Cli, repo_with: RepoWith) -> None:
    repo = repo_with(pipeline(SECRET_STEP, name="E2E_NEVER_SET_SECRET"))

    done = cli("run", "--json", cwd=repo)

    assert done.code in (1, 2), (done.out, done.err)
    no_traceback(done)
    assert "E2E_NEVER_SET_SECRET" in done.json()["error"]["message"]
