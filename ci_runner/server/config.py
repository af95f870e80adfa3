"""`ci-runner serve`'s configuration: one YAML file naming the repos (the tenants) and the
server's settings, checked whole at start so that a typo fails there, naming its key.

Secrets named by ``*_env`` keys are read from the server's environment here, once;
the records keep them out of their ``repr`` so a traceback never prints one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, NoReturn, cast

from ci_runner.engine.policy import seconds
from ci_runner.errors import UsageError

FORGES = ("github", "gitea", "forgejo", "gitlab")
FORK_POLICIES = ("approve", "trust", "ignore")
DEFAULT_API_URLS = {"github": "https://api.github.com", "gitlab": "https://gitlab.com/api/v4"}
MAX_BODY_BYTES = 25 * 1024 * 1024

# owner/repo, GitLab subgroups allowed (a/b/c); each part becomes a path component.
_REPO_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,99}")

EXAMPLE_CONFIG = """\
# ci-runner serve --config ci-runner.yml
# Point each repo's webhook at http(s)://THIS-HOST/hooks/<forge> (github, gitea,
# forgejo or gitlab), content type application/json, with the repo's secret.
server:
  host: 127.0.0.1            # where to listen (put a TLS proxy in front for the internet)
  port: 8080
  workers: 4                 # runs driven at once, all repos together; more queue durably
  api_token_env: CI_RUNNER_API_TOKEN   # bearer token of the HTTP API (runs, logs, approve)
  # users: {alice: ALICE_CI_TOKEN}     # per-person API tokens: see only repos they approve
  # approvers: [root]                  # may approve runs of every repo
  grace_s: 30                # on SIGTERM, running steps get this long before being left
  # public_url: https://ci.example.com # commit statuses link to its run pages, /runs/ID
  # pass_env: [HTTP_PROXY]   # variables pipelines see besides PATH, HOME and the locale
  # retention: 90 days       # hourly `ci-runner prune` of what ended longer ago (default: keep)
  # sandbox: auto            # bwrap | landlock | off; runs of fork PRs always need bwrap
  # run_timeout: 6 hours     # a run stops (failed) past this; a pipeline's own timeout may be less
  # request_timeout: 10      # seconds a client has to send a whole request (slow ones get 408)
  # db: postgresql://ci@db.example.com/ci  # a fleet's shared database (CI_RUNNER_DB and
                                           # --db win over it); default: SQLite in the home
repos:
  - name: octo-org/octo-repo          # the forge's full name (GitLab: path_with_namespace)
    forge: github                     # github | gitea | forgejo | gitlab
    clone_url: https://example.invalid/octo-org/octo-repo.git
                                      # any URL git can fetch, a local path included
    webhook_secret_env: OCTO_HOOK_SECRET                        # or webhook_secret: "..."
    branches: ["main", "release/*"]   # pushes to other branches start nothing; PRs always run
    # tags: ["v*"]                    # tag pushes that start a run (none by default)
    concurrency: 2                    # runs of this repo driven at once
    secrets: [DEPLOY_TOKEN]           # granted to this repo's steps that name them
    approvers: [alice]                # who may approve over HTTP
    # fork_prs: approve               # approve (wait for an approver) | trust | ignore
    # supersede: {branches: false, pull_requests: true}   # a newer push cancels the older run
    # status: {token_env: OCTO_STATUS_TOKEN, api_url: https://api.github.com, context: ci-runner}
    # pipeline: CI                    # which Pipeline class, when .ci/pipeline.py has several
"""


@dataclass(frozen=True)
class StatusConfig:
    """Where and how commit statuses are reported for one repo."""

    api_url: str
    token: str = field(repr=False)
    context: str = "ci-runner"


@dataclass(frozen=True)
class RepoConfig:
    """One tenant: a repository on a forge, and what its webhooks may start."""

    name: str
    forge: str
    clone_url: str
    webhook_secret: bytes = field(repr=False)
    branches: tuple[str, ...] = ("main",)
    tags: tuple[str, ...] = ()
    concurrency: int = 2
    secrets: tuple[str, ...] = ()
    approvers: tuple[str, ...] = ()
    fork_prs: str = "approve"
    supersede_branches: bool = False
    supersede_pull_requests: bool = True
    status: StatusConfig | None = None
    pipeline: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.forge, self.name)

    def wants_branch(self, branch: str) -> bool:
        return any(fnmatchcase(branch, pattern) for pattern in self.branches)

    def wants_tag(self, tag: str) -> bool:
        return any(fnmatchcase(tag, pattern) for pattern in self.tags)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 4
    api_token: str | None = field(default=None, repr=False)
    user_tokens: Mapping[str, str] = field(default_factory=dict, repr=False)  # token -> user
    approvers: tuple[str, ...] = ()
    grace_s: float = 30.0
    max_body_bytes: int = MAX_BODY_BYTES
    public_url: str | None = None
    pass_env: tuple[str, ...] = ()
    poll_s: float = 1.0
    retention_s: float | None = None  # prune what ended longer ago (None: keep all)
    sandbox: str = "auto"  # every run's sandbox: auto | bwrap | landlock | off (forks: bwrap)
    run_timeout_s: float = 6 * 3600.0  # a run's time each time it is driven (waits not counted)
    request_timeout_s: float = 10.0  # a client has this long to send a whole request
    db: str | None = None  # a postgresql:// URL (or a SQLite file) unless CI_RUNNER_DB says


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    repos: tuple[RepoConfig, ...]
    path: Path
    secret_values: Mapping[str, str] = field(default_factory=dict, repr=False)

    def repo(self, forge: str, name: str) -> RepoConfig | None:
        for repo in self.repos:
            if repo.forge == forge and repo.name.lower() == name.lower():
                return repo
        return None

    def repos_of(self, forge: str) -> tuple[RepoConfig, ...]:
        return tuple(r for r in self.repos if r.forge == forge)

    def may_approve(self, user: str, repo: RepoConfig | None) -> bool:
        """Whether ``user`` approves runs of ``repo`` (None: a run of no repo in the config):
        one of its ``approvers``, or of ``server.approvers`` (every repo's)."""
        return user in self.server.approvers or (repo is not None and user in repo.approvers)

    def may_read(self, user: str | None, repo: RepoConfig | None) -> bool:
        """Whether a caller sees runs of ``repo``: their records, logs, artifacts, waits
        and deliveries. The shared token (``user`` None) is the admin's and sees every
        run; a user's token sees what its user may approve, and nothing else."""
        return user is None or self.may_approve(user, repo)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and check ``path``; raises ``UsageError`` naming the file and the bad key."""
    import yaml

    env = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read the config {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise UsageError(f"{path} is not valid YAML ({where}{getattr(exc, 'problem', exc)})"
                         ) from exc
    return parse_config(data, path=path, environ=env)


def parse_config(data: Any, *, path: Path, environ: Mapping[str, str]) -> Config:
    check = _Checker(path, environ)
    top = check.mapping(data, "", {"server", "repos"})
    server = _server(check, top.get("server") or {})
    raw_repos = top.get("repos")
    if not isinstance(raw_repos, list) or not raw_repos:
        check.fail("repos", "must be a list with at least one repo")
    repos = tuple(_repo(check, item, f"repos[{i}]") for i, item in enumerate(raw_repos))
    seen: set[tuple[str, str]] = set()
    for i, repo in enumerate(repos):
        key = (repo.forge, repo.name.lower())
        if key in seen:
            check.fail(f"repos[{i}].name", f"{repo.name!r} on {repo.forge} is listed twice")
        seen.add(key)
    values: dict[str, str] = {}
    for i, repo in enumerate(repos):
        for j, name in enumerate(repo.secrets):
            if name not in environ:
                check.fail(f"repos[{i}].secrets[{j}]",
                           f"{name} is not set in the server's environment: export it")
            values[name] = environ[name]
    return Config(server=server, repos=repos, path=path, secret_values=values)


def _server(check: _Checker, raw: Any) -> ServerConfig:
    known = {"host", "port", "workers", "api_token_env", "users", "approvers", "grace_s",
             "max_body_mb", "public_url", "pass_env", "poll_s", "retention", "sandbox",
             "run_timeout", "request_timeout", "db"}
    s = check.mapping(raw, "server", known)
    api_token = None
    if "api_token_env" in s:
        api_token = check.env_value(s["api_token_env"], "server.api_token_env")
    tokens: dict[str, str] = {}
    for user, env_name in check.mapping(s.get("users") or {}, "server.users", None).items():
        where = f"server.users.{user}"
        if not isinstance(user, str) or not _USER.fullmatch(user):
            check.fail(where, "a user name is letters, digits and . _ @ -")
        tokens[check.env_value(env_name, where)] = user
    max_mb = check.number(s.get("max_body_mb", 25), "server.max_body_mb", low=0.001)
    retention_s = None
    if s.get("retention") is not None:
        try:
            retention_s = seconds(s["retention"], what="a retention")
        except UsageError as exc:
            check.fail("server.retention", exc.message)
        if retention_s < 3600:
            check.fail("server.retention", "must be at least 1 hour, like '30 days'")
    return ServerConfig(
        host=check.text(s.get("host", "127.0.0.1"), "server.host"),
        port=int(check.number(s.get("port", 8080), "server.port", low=0, high=65535,
                              integer=True)),
        workers=int(check.number(s.get("workers", 4), "server.workers", low=1, integer=True)),
        api_token=api_token, user_tokens=tokens,
        approvers=check.users(s.get("approvers", []), "server.approvers"),
        grace_s=check.number(s.get("grace_s", 30), "server.grace_s", low=0),
        max_body_bytes=int(max_mb * 1024 * 1024),
        public_url=(check.text(s["public_url"], "server.public_url").rstrip("/")
                    if s.get("public_url") else None),
        pass_env=check.env_names(s.get("pass_env", []), "server.pass_env"),
        poll_s=check.number(s.get("poll_s", 1.0), "server.poll_s", low=0.01),
        retention_s=retention_s,
        sandbox=check.choice(s.get("sandbox", "auto"), "server.sandbox",
                             ("auto", "bwrap", "landlock", "off")),
        run_timeout_s=check.duration(s.get("run_timeout", "6 hours"), "server.run_timeout"),
        request_timeout_s=check.number(s.get("request_timeout", 10), "server.request_timeout",
                                       low=0.1, high=3600),
        db=_db(check, s.get("db")),
    )


def _db(check: _Checker, raw: Any) -> str | None:
    if raw is None:
        return None
    text = check.text(raw, "server.db").strip()
    if "://" in text and not text.startswith(("postgresql://", "postgres://")):
        check.fail("server.db", "a postgresql://USER@HOST/DB URL or a SQLite file's path")
    return text


def _repo(check: _Checker, raw: Any, where: str) -> RepoConfig:
    known = {"name", "forge", "clone_url", "webhook_secret", "webhook_secret_env", "branches",
             "tags", "concurrency", "secrets", "approvers", "fork_prs", "supersede", "status",
             "pipeline"}
    r = check.mapping(raw, where, known)
    for key in ("name", "forge", "clone_url"):
        if key not in r:
            check.fail(f"{where}.{key}", "is required")
    name = check.text(r["name"], f"{where}.name")
    if not _REPO_NAME.fullmatch(name) or any(p in (".", "..") or p.endswith(".git")
                                             for p in name.split("/")):
        check.fail(f"{where}.name", f"{name!r} is not a full name like owner/repo")
    forge = check.text(r["forge"], f"{where}.forge")
    if forge not in FORGES:
        check.fail(f"{where}.forge", f"must be one of {', '.join(FORGES)} (got {forge!r})")
    clone_url = check.text(r["clone_url"], f"{where}.clone_url")
    if clone_url.startswith("-"):
        check.fail(f"{where}.clone_url", "must be a URL or a path, not an option")
    if ("webhook_secret" in r) == ("webhook_secret_env" in r):
        check.fail(f"{where}.webhook_secret_env",
                   "give exactly one of webhook_secret_env and webhook_secret")
    if "webhook_secret" in r:
        secret = check.text(r["webhook_secret"], f"{where}.webhook_secret")
    else:
        secret = check.env_value(r["webhook_secret_env"], f"{where}.webhook_secret_env")
    fork_prs = check.text(r.get("fork_prs", "approve"), f"{where}.fork_prs")
    if fork_prs not in FORK_POLICIES:
        check.fail(f"{where}.fork_prs", f"must be one of {', '.join(FORK_POLICIES)}")
    sup = check.mapping(r.get("supersede") or {}, f"{where}.supersede",
                        {"branches", "pull_requests"})
    pipeline = r.get("pipeline")
    return RepoConfig(
        name=name, forge=forge, clone_url=clone_url, webhook_secret=secret.encode(),
        branches=check.patterns(r.get("branches", ["main"]), f"{where}.branches"),
        tags=check.patterns(r.get("tags", []), f"{where}.tags"),
        concurrency=int(check.number(r.get("concurrency", 2), f"{where}.concurrency", low=1,
                                     integer=True)),
        secrets=check.env_names(r.get("secrets", []), f"{where}.secrets"),
        approvers=check.users(r.get("approvers", []), f"{where}.approvers"),
        fork_prs=fork_prs,
        supersede_branches=check.flag(sup.get("branches", False), f"{where}.supersede.branches"),
        supersede_pull_requests=check.flag(sup.get("pull_requests", True),
                                           f"{where}.supersede.pull_requests"),
        status=_status(check, r.get("status"), forge, f"{where}.status"),
        pipeline=None if pipeline is None else check.text(pipeline, f"{where}.pipeline"),
    )


def _status(check: _Checker, raw: Any, forge: str, where: str) -> StatusConfig | None:
    if raw is None:
        return None
    s = check.mapping(raw, where, {"api_url", "token_env", "context"})
    if "token_env" not in s:
        check.fail(f"{where}.token_env", "is required to report commit statuses")
    api_url = s.get("api_url", DEFAULT_API_URLS.get(forge))
    if api_url is None:
        check.fail(f"{where}.api_url", f"is required for {forge} (e.g. https://HOST/api/v1)")
    api_url = check.text(api_url, f"{where}.api_url").rstrip("/")
    if not api_url.startswith(("http://", "https://")):
        check.fail(f"{where}.api_url", "must start with http:// or https://")
    return StatusConfig(
        api_url=api_url, token=check.env_value(s["token_env"], f"{where}.token_env"),
        context=check.text(s.get("context", "ci-runner"), f"{where}.context"),
    )


class _Checker:
    """Type checks that raise one ``UsageError`` naming the file and the key."""

    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.path = path
        self.environ = environ

    def fail(self, where: str, problem: str) -> NoReturn:
        raise UsageError(f"{self.path}: {where or 'the top level'}: {problem}", key=where)

    def mapping(self, raw: Any, where: str, known: set[str] | None) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.fail(where, "must be a mapping of key: value")
        if known is not None:
            for key in raw:
                if key not in known:
                    inside = f"{where}.{key}" if where else str(key)
                    self.fail(inside, f"unknown key (known: {', '.join(sorted(known))})")
        return cast("dict[str, Any]", raw)

    def duration(self, raw: Any, where: str) -> float:
        try:
            value = seconds(raw, what=where)
        except UsageError as exc:
            self.fail(where, exc.message)
        if value <= 0:
            self.fail(where, "must be more than 0, like '2 hours'")
        return value

    def choice(self, raw: Any, where: str, allowed: tuple[str, ...]) -> str:
        value = self.text(raw, where)
        if value not in allowed:
            self.fail(where, f"must be one of {', '.join(allowed)}")
        return value

    def text(self, raw: Any, where: str) -> str:
        if not isinstance(raw, str) or not raw.strip():
            self.fail(where, "must be a non-empty string")
        return str(raw)

    def flag(self, raw: Any, where: str) -> bool:
        if not isinstance(raw, bool):
            self.fail(where, "must be true or false")
        return bool(raw)

    def number(self, raw: Any, where: str, *, low: float, high: float | None = None,
               integer: bool = False) -> float:
        ok_type = isinstance(raw, int) if integer else isinstance(raw, (int, float))
        if isinstance(raw, bool) or not ok_type:
            self.fail(where, f"must be {'a whole number' if integer else 'a number'}")
        if raw < low or (high is not None and raw > high):
            bound = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
            self.fail(where, f"must be {bound} (got {raw})")
        return float(raw)

    def strings(self, raw: Any, where: str) -> tuple[str, ...]:
        if isinstance(raw, str) or not isinstance(raw, list):
            self.fail(where, "must be a list of strings")
        return tuple(self.text(item, f"{where}[{i}]") for i, item in enumerate(raw))

    def patterns(self, raw: Any, where: str) -> tuple[str, ...]:
        return self.strings(raw, where)

    def users(self, raw: Any, where: str) -> tuple[str, ...]:
        names = self.strings(raw, where)
        for i, name in enumerate(names):
            if not _USER.fullmatch(name):
                self.fail(f"{where}[{i}]", f"{name!r} is not a user name")
        return names

    def env_names(self, raw: Any, where: str) -> tuple[str, ...]:
        names = self.strings(raw, where)
        for i, name in enumerate(names):
            if not _ENV_NAME.fullmatch(name):
                self.fail(f"{where}[{i}]", f"{name!r} is not an environment variable name")
        return names

    def env_value(self, raw: Any, where: str) -> str:
        name = self.text(raw, where)
        if not _ENV_NAME.fullmatch(name):
            self.fail(where, f"{name!r} is not an environment variable name")
        value = self.environ.get(name, "")
        if not value:
            self.fail(where, f"{name} is not set in the server's environment: export it")
        return value
