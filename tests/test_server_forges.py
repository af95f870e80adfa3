"""Signatures, payload parsing and the config, on the real fixture bodies (no server)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from ci_runner.errors import UsageError
from ci_runner.server.config import EXAMPLE_CONFIG, load_config, parse_config
from ci_runner.server.forges import HookRejected, authenticate, decide, parse, valid_ref_name
from tests import serverkit as kit

SHA = "a" * 40


def _config(tmp_path: Path, **repo: object):
    entry = {"name": "Codertocat/Hello-World", "forge": "github", "clone_url": "/x",
             "webhook_secret": "s", **repo}
    return parse_config({"repos": [entry]}, path=tmp_path / "c.yml", environ={})


def _parse(forge: str, body: dict, event: str):
    raw = json.dumps(body).encode()
    return parse(forge, {k.lower(): v for k, v in kit.signed(forge, raw, event=event).items()},
                 raw)


def test_github_known_answer_vector(tmp_path: Path):
    # From GitHub's "Validating webhook deliveries".
    config = _config(tmp_path, webhook_secret="It's a Secret to Everybody")
    headers = {"x-hub-signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c"
                                      "46f4379c8b043e17"}
    assert authenticate("github", headers, b"Hello, World!", config.repos) == [config.repos[0]]
    with pytest.raises(HookRejected) as bad:
        authenticate("github", headers, b"Hello, World?", config.repos)
    assert bad.value.status == 401


@pytest.mark.parametrize("forge", ["github", "gitea", "forgejo", "gitlab"])
def test_missing_or_empty_signature_fails(tmp_path: Path, forge: str):
    config = _config(tmp_path, forge=forge)
    for headers in ({}, {"x-hub-signature-256": "", "x-gitea-signature": "",
                         "x-forgejo-signature": "", "x-gitlab-token": ""}):
        with pytest.raises(HookRejected) as rejected:
            authenticate(forge, headers, b"{}", config.repos)
        assert rejected.value.status == 401


def test_a_secret_field_in_the_body_is_not_authentication(tmp_path: Path):
    body = kit.fixture("gitea-pull_request-synchronized.json")
    config = _config(tmp_path, name="jcitizen/my-repo", forge="gitea", webhook_secret="12345")
    raw = json.dumps(body).encode()
    assert body["secret"] == "12345"
    for headers in ({}, {"x-gitea-signature": "12345"}):
        with pytest.raises(HookRejected):
            authenticate("gitea", headers, raw, config.repos)


def test_each_fixture_parses_to_one_delivery():
    push = _parse("github", kit.github_push(SHA, branch="main"), "push")
    assert (push.kind, push.sha, push.branch, push.ref, push.lane) == (
        "push", SHA, "main", "refs/heads/main", "branch:main")
    assert push.repo == "Codertocat/Hello-World" and not push.deleted

    pr = _parse("github", kit.github_pr(SHA), "pull_request")
    assert (pr.kind, pr.action, pr.pr, pr.sha, pr.branch, pr.is_fork) == (
        "pull_request", "opened", 2, SHA, "changes", False)
    assert pr.source_ref == "refs/pull/2/head"
    sync = _parse("github", kit.github_pr(SHA, name="github-pull_request-synchronize.json"),
                  "pull_request")
    assert sync.action == "synchronize"
    fork = _parse("github", kit.github_pr(SHA, fork="mallory/Hello-World"), "pull_request")
    assert fork.is_fork

    gitea = _parse("gitea", kit.gitea_pr(SHA), "pull_request")
    assert (gitea.action, gitea.pr, gitea.repo, gitea.is_fork) == (
        "synchronize", 1, "jcitizen/my-repo", False)  # Gitea's "synchronized"
    gpush = _parse("gitea", kit.gitea_push(SHA), "push")
    assert (gpush.repo, gpush.branch, gpush.sha) == ("gogits/hello-world", "master", SHA)

    lab = _parse("gitlab", kit.gitlab_push(SHA), "Push Hook")
    assert (lab.repo, lab.branch, lab.sha, lab.kind) == ("gitlab-org/hello-world", "master",
                                                         SHA, "push")
    mr = _parse("gitlab", kit.gitlab_mr(SHA), "Merge Request Hook")
    assert (mr.kind, mr.action, mr.pr, mr.source_ref) == (
        "pull_request", "opened", 7, "refs/merge-requests/7/head")
    title_edit = kit.gitlab_mr(SHA, action="update")
    del title_edit["object_attributes"]["oldrev"]
    assert _parse("gitlab", title_edit, "Merge Request Hook").kind == "other"

    ping = _parse("github", kit.fixture("github-ping.json"), "ping")
    assert ping.kind == "ping"
    deleted = _parse("github", kit.fixture("github-push.json"), "push")
    assert deleted.deleted and deleted.sha is None


def test_decide_filters_branches_tags_deletes_and_forks(tmp_path: Path):
    repo = _config(tmp_path, branches=["main", "release/*"], tags=["v*"],
                   fork_prs="ignore").repos[0]
    assert decide(_parse("github", kit.github_push(SHA, branch="main"), "push"), repo) is None
    assert decide(_parse("github", kit.github_push(SHA, branch="release/1.2"), "push"),
                  repo) is None
    assert "not in the repo's branches" in str(
        decide(_parse("github", kit.github_push(SHA, branch="wip"), "push"), repo))
    tag = kit.github_push(SHA)
    tag["ref"] = "refs/tags/v1.0"
    assert decide(_parse("github", tag, "push"), repo) is None
    assert decide(_parse("github", kit.fixture("github-push.json"), "push"), repo) == (
        "a deleted branch or tag")
    assert decide(_parse("github", kit.fixture("github-ping.json"), "ping"), repo) == "ping"
    fork = _parse("github", kit.github_pr(SHA, fork="mallory/x"), "pull_request")
    assert "forks are ignored" in str(decide(fork, repo))
    closed = kit.github_pr(SHA)
    closed["action"] = "closed"
    assert "closed" in str(decide(_parse("github", closed, "pull_request"), repo))


@pytest.mark.parametrize("ref", ["-x", "--upload-pack=evil", "a..b", "a b", "x.lock", "a@{1}",
                                 "a//b", ".hidden", "a/.b", "end/", "end.", "a:b", "a\\b", "@"])
def test_refs_git_would_misread_are_rejected(ref: str):
    assert not valid_ref_name(ref)
    body = kit.github_push(SHA)
    body["ref"] = "refs/heads/" + ref
    with pytest.raises(HookRejected) as rejected:
        _parse("github", body, "push")
    assert rejected.value.status == 400


def test_good_refs_pass():
    for ref in ("main", "release/1.2", "feature/x-y_z", "v1.0.0", "üñí"):
        assert valid_ref_name(ref), ref


@pytest.mark.parametrize("mutate", [
    lambda b: b.update(after="not-a-sha"),
    lambda b: b.update(ref=None),
    lambda b: b.pop("repository"),
])
def test_malformed_payloads_are_400(mutate):
    body = kit.github_push(SHA)
    mutate(body)
    with pytest.raises(HookRejected) as rejected:
        _parse("github", body, "push")
    assert rejected.value.status == 400


def test_github_form_encoded_body():
    from urllib.parse import urlencode

    raw = urlencode({"payload": json.dumps(kit.github_push(SHA))}).encode()
    headers = {"x-github-event": "push", "x-github-delivery": "d",
               "content-type": "application/x-www-form-urlencoded"}
    assert parse("github", headers, raw).sha == SHA


def test_the_example_config_is_valid(tmp_path: Path):
    path = tmp_path / "ci-runner.yml"
    path.write_text(EXAMPLE_CONFIG)
    env = {"CI_RUNNER_API_TOKEN": "tok-VALUE-1", "OCTO_HOOK_SECRET": "hook-VALUE-2",
           "DEPLOY_TOKEN": "deploy-VALUE-3"}
    config = load_config(path, env)
    repo = config.repos[0]
    assert (repo.name, repo.forge, repo.concurrency, repo.secrets, repo.approvers) == (
        "octo-org/octo-repo", "github", 2, ("DEPLOY_TOKEN",), ("alice",))
    assert repo.wants_branch("release/2") and not repo.wants_branch("dev")
    assert config.server.workers == 4 and config.server.api_token == "tok-VALUE-1"
    assert "VALUE" not in repr(config)


@pytest.mark.parametrize(("data", "key"), [
    ({"repos": []}, "repos"),
    ({"repos": [{"name": "a/b", "forge": "gihub", "clone_url": "/x", "webhook_secret": "s"}]},
     "repos[0].forge"),
    ({"repos": [{"name": "a/b", "forge": "github", "clone_url": "/x", "webhook_secret": "s",
                 "branchs": ["main"]}]}, "repos[0].branchs"),
    ({"repos": [{"name": "a/b", "forge": "github", "clone_url": "/x"}]},
     "repos[0].webhook_secret_env"),
    ({"repos": [{"name": "a/b", "forge": "github", "clone_url": "/x",
                 "webhook_secret_env": "UNSET_VAR"}]}, "repos[0].webhook_secret_env"),
    ({"repos": [{"name": "../b", "forge": "github", "clone_url": "/x", "webhook_secret": "s"}]},
     "repos[0].name"),
    ({"repos": [{"name": "a/b", "forge": "github", "clone_url": "/x", "webhook_secret": "s",
                 "secrets": ["NOT_EXPORTED"]}]}, "repos[0].secrets[0]"),
    ({"repos": [{"name": "a/b", "forge": "github", "clone_url": "/x", "webhook_secret": "s",
                 "concurrency": 0}]}, "repos[0].concurrency"),
    ({"server": {"workerz": 2}, "repos": [{"name": "a/b", "forge": "github", "clone_url": "/x",
                                           "webhook_secret": "s"}]}, "server.workerz"),
    ({"repos": [{"name": "a/b", "forge": "gitea", "clone_url": "/x", "webhook_secret": "s",
                 "status": {"token_env": "T"}}]}, "repos[0].status.api_url"),
    ({"server": {"retention": "forever"}, "repos": [{"name": "a/b", "forge": "github",
                                                     "clone_url": "/x", "webhook_secret": "s"}]},
     "server.retention"),
    ({"server": {"retention": "10 minutes"}, "repos": [{"name": "a/b", "forge": "github",
                                                        "clone_url": "/x",
                                                        "webhook_secret": "s"}]},
     "server.retention"),
])
def test_config_errors_name_the_bad_key(tmp_path: Path, data: dict, key: str):
    with pytest.raises(UsageError) as error:
        parse_config(data, path=tmp_path / "c.yml", environ={"T": "x"})
    assert f": {key}: " in error.value.message


def test_retention_is_off_unless_set(tmp_path: Path):
    repos = [{"name": "a/b", "forge": "github", "clone_url": "/x", "webhook_secret": "s"}]
    assert parse_config({"repos": repos}, path=tmp_path / "c.yml",
                        environ={}).server.retention_s is None
    kept = parse_config({"server": {"retention": "2 weeks"}, "repos": repos},
                        path=tmp_path / "c.yml", environ={})
    assert kept.server.retention_s == 14 * 86400


def test_signature_of_a_big_body_is_over_the_raw_bytes(tmp_path: Path):
    config = _config(tmp_path)
    raw = b'{"x": "' + b"y" * 1_000_000 + b'"}'
    good = "sha256=" + hmac.new(b"s", raw, hashlib.sha256).hexdigest()
    assert authenticate("github", {"x-hub-signature-256": good.upper()}, raw, config.repos)
