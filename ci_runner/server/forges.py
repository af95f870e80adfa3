"""What each forge sends, and one normalised ``Delivery`` out of it.

Per forge: which header names the event, which carries the delivery id, and how the
body is signed (GitHub ``X-Hub-Signature-256: sha256=<hex>``; Gitea and Forgejo a bare
hex HMAC-SHA256 in ``X-Gitea-Signature`` / ``X-Forgejo-Signature``; GitLab a shared
token in ``X-Gitlab-Token``). Signatures are checked over the raw bytes before the body
is parsed; a ``secret`` field inside a body is data, never authentication.

Everything in a payload is untrusted: shas must be hex, refs must be names git would
accept as refs (never something it could read as an option), PR numbers integers in
range, every string short and storable. A value the database could not store is
refused here, with a 400 naming its field, so it never reaches the group commit where
it would fail the deliveries of other tenants committed with it. A body nested deeper
than Python's parser goes is malformed too (400), not a crash.
``HookRejected`` carries the HTTP status the receiver answers with.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs

from ci_runner.errors import CIRunnerError
from ci_runner.server.config import RepoConfig

ZERO_SHA = re.compile(r"0{40}|0{64}")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Pull request numbers are counters; beyond 2**53 no JSON reader keeps them exact (and
# SQLite stores no integer past 2**63 at all).
MAX_NUMBER = 2**53 - 1
MAX_SENDER = 255  # GitHub logins are at most 39 characters, GitLab usernames 255


class HookRejected(CIRunnerError):
    """A delivery the receiver refuses (nothing is stored); ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, status=status)
        self.status = status


@dataclass(frozen=True)
class ForgeSpec:
    name: str
    event_header: str
    delivery_headers: tuple[str, ...]
    signature_header: str
    scheme: str  # "hmac" (hex HMAC-SHA256, ``prefix`` before it) or "token"
    prefix: str = ""


SPECS: dict[str, ForgeSpec] = {
    "github": ForgeSpec("github", "x-github-event", ("x-github-delivery",),
                        "x-hub-signature-256", "hmac", "sha256="),
    "gitea": ForgeSpec("gitea", "x-gitea-event", ("x-gitea-delivery", "x-gogs-delivery"),
                       "x-gitea-signature", "hmac"),
    "forgejo": ForgeSpec("forgejo", "x-forgejo-event", ("x-forgejo-delivery", "x-gitea-delivery"),
                         "x-forgejo-signature", "hmac"),
    "gitlab": ForgeSpec("gitlab", "x-gitlab-event", ("idempotency-key", "x-gitlab-event-uuid"),
                        "x-gitlab-token", "token"),
}


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery, the same shape whichever forge sent it."""

    forge: str
    delivery_id: str
    event: str  # the forge's own event name, as sent
    kind: str  # push | pull_request | ping | other
    action: str | None  # opened, synchronize, reopened (normalised), or None
    repo: str  # full name of the repository the hook belongs to
    sha: str | None = None
    ref: str | None = None  # refs/heads/x, refs/tags/v1, refs/pull/N/head...
    branch: str | None = None  # the pushed branch, or the pull request's head branch
    tag: str | None = None
    pr: int | None = None
    is_fork: bool = False
    deleted: bool = False
    sender: str | None = None
    source_ref: str | None = None  # what to fetch when the forge will not serve a bare sha

    @property
    def lane(self) -> str:
        """Runs in one lane supersede each other: a branch, a tag or a pull request."""
        if self.pr is not None:
            return f"pr:{self.pr}"
        if self.tag is not None:
            return f"tag:{self.tag}"
        return f"branch:{self.branch}"

    @property
    def mirror_ref(self) -> str:
        """The mirror's ref that holds the fetched sha (built from validated names)."""
        if self.pr is not None:
            return f"refs/ci-runner/pull/{self.pr}"
        if self.tag is not None:
            return f"refs/ci-runner/tags/{self.tag}"
        return f"refs/ci-runner/heads/{self.branch}"

    def params(self) -> dict[str, Any]:
        """What the pipeline gets as ``event.payload``: plain data, no secrets."""
        return {"forge": self.forge, "event": self.kind, "action": self.action,
                "repo": self.repo, "branch": self.branch, "tag": self.tag, "pr": self.pr,
                "fork": self.is_fork, "sender": self.sender, "delivery": self.delivery_id}


def header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return value.strip() if value is not None and value.strip() else None


def authenticate(forge: str, headers: Mapping[str, str], body: bytes,
                 repos: Iterable[RepoConfig]) -> list[RepoConfig]:
    """The configured repos whose secret signed ``body`` (checked in constant time).

    Raises 401 when the signature header is missing or matches no secret.
    """
    spec = SPECS[forge]
    given = header(headers, spec.signature_header)
    if given is None:
        raise HookRejected(401, f"missing {_title(spec.signature_header)}: configure the"
                                " webhook's secret")
    matched: list[RepoConfig] = []
    digests: dict[bytes, bytes] = {}
    for repo in repos:
        secret = repo.webhook_secret
        if spec.scheme == "token":
            ok = hmac.compare_digest(given.encode(), secret)
        else:
            if secret not in digests:
                digests[secret] = (spec.prefix + hmac.new(secret, body, hashlib.sha256)
                                   .hexdigest()).encode()
            ok = hmac.compare_digest(given.lower().encode(), digests[secret])
        if ok:
            matched.append(repo)
    if not matched:
        raise HookRejected(401, f"{_title(spec.signature_header)} does not match the secret of"
                                " any configured repository")
    return matched


def parse(forge: str, headers: Mapping[str, str], body: bytes) -> Delivery:
    """Normalise an authenticated delivery; raises 400 for anything malformed."""
    spec = SPECS[forge]
    event = header(headers, spec.event_header)
    if event is None:
        raise HookRejected(400, f"missing {_title(spec.event_header)} header")
    delivery_id = next((v for h in spec.delivery_headers if (v := header(headers, h))), None)
    if delivery_id is None and forge == "gitlab":
        # GitLab before 17.4 sends no id: the same body redelivered is the same delivery.
        delivery_id = "body-sha256:" + hashlib.sha256(body).hexdigest()
    if delivery_id is None:
        raise HookRejected(400, f"missing {_title(spec.delivery_headers[0])} header")
    if len(delivery_id) > 200:
        raise HookRejected(400, "the delivery id is longer than 200 characters")
    data = _json(headers, body)
    if forge == "gitlab":
        return _gitlab(delivery_id, event, data)
    return _github_like(forge, delivery_id, event, data)


def _json(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
    try:
        if content_type == "application/x-www-form-urlencoded":
            form = parse_qs(body.decode("utf-8"), strict_parsing=True)
            text = form["payload"][0]
        else:
            text = body.decode("utf-8")
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError, KeyError, IndexError) as exc:
        raise HookRejected(400, "the body is not a JSON webhook payload") from exc
    except RecursionError as exc:  # json's parser recurses once per level
        raise HookRejected(400, "the body is JSON nested too deeply for a webhook") from exc
    if not isinstance(data, dict):
        raise HookRejected(400, "the body is not a JSON object")
    return data


def _github_like(forge: str, delivery_id: str, event: str, data: dict[str, Any]) -> Delivery:
    repo = _text(_dig(data, "repository", "full_name"), "repository.full_name")
    base = Delivery(forge=forge, delivery_id=delivery_id, event=event, kind="other",
                    action=None, repo=repo, sender=_sender(_dig(data, "sender", "login"),
                                                           "sender.login"))
    if event == "ping":
        return replace(base, kind="ping")
    if event == "push":
        return _push(data, base, after=data.get("after"), deleted=bool(data.get("deleted")))
    if event in ("pull_request", "pull_request_sync"):
        action = _action(data.get("action"), "action")
        action = {"synchronized": "synchronize", "reopen": "reopened"}.get(action, action)
        if action not in ("opened", "synchronize", "reopened"):
            return replace(base, action=action)
        pr = _int(data.get("number", _dig(data, "pull_request", "number")), "number")
        head_repo = _dig(data, "pull_request", "head", "repo", "full_name")
        base_repo = _dig(data, "pull_request", "base", "repo", "full_name") or repo
        branch = _ref_name(_dig(data, "pull_request", "head", "ref"), "pull_request.head.ref")
        return replace(
            base, kind="pull_request", action=action, pr=pr,
            sha=_sha(_dig(data, "pull_request", "head", "sha"), "pull_request.head.sha"),
            ref=f"refs/pull/{pr}/head", source_ref=f"refs/pull/{pr}/head", branch=branch,
            # A head repo that is gone (deleted fork) is no more trusted than a fork.
            is_fork=not isinstance(head_repo, str) or head_repo.lower() != str(base_repo).lower(),
        )
    return base


def _gitlab(delivery_id: str, event: str, data: dict[str, Any]) -> Delivery:
    repo = _text(_dig(data, "project", "path_with_namespace"), "project.path_with_namespace")
    user = data.get("user_username") or _dig(data, "user", "username")
    base = Delivery(forge="gitlab", delivery_id=delivery_id, event=event, kind="other",
                    action=None, repo=repo, sender=_sender(user, "user_username"))
    if event in ("Push Hook", "Tag Push Hook"):
        return _push(data, base, after=data.get("after"), deleted=False)
    if event == "Merge Request Hook":
        attrs = data.get("object_attributes")
        if not isinstance(attrs, dict):
            raise HookRejected(400, "object_attributes is missing")
        action = _action(attrs.get("action"), "object_attributes.action")
        # "update" is also sent for a new title or label: only new commits (oldrev) count.
        if action == "update" and not attrs.get("oldrev"):
            return replace(base, action="update")
        normal = {"open": "opened", "reopen": "reopened", "update": "synchronize"}.get(action)
        if normal is None:
            return replace(base, action=action)
        iid = _int(attrs.get("iid"), "object_attributes.iid")
        source, target = attrs.get("source_project_id"), attrs.get("target_project_id")
        return replace(
            base, kind="pull_request", action=normal, pr=iid,
            sha=_sha(_dig(attrs, "last_commit", "id"), "object_attributes.last_commit.id"),
            ref=f"refs/merge-requests/{iid}/head", source_ref=f"refs/merge-requests/{iid}/head",
            branch=_ref_name(attrs.get("source_branch"), "object_attributes.source_branch"),
            is_fork=source is None or source != target,
        )
    return base


def _push(data: dict[str, Any], base: Delivery, *, after: Any, deleted: bool) -> Delivery:
    ref = _text(data.get("ref"), "ref")
    if not isinstance(after, str) or not (ZERO_SHA.fullmatch(after) or _SHA.fullmatch(after)):
        raise HookRejected(400, "after is not a commit sha")
    if deleted or ZERO_SHA.fullmatch(after):
        return replace(base, kind="push", action="delete", deleted=True)
    branch = tag = None
    if ref.startswith("refs/heads/"):
        branch = _ref_name(ref.removeprefix("refs/heads/"), "ref")
    elif ref.startswith("refs/tags/"):
        tag = _ref_name(ref.removeprefix("refs/tags/"), "ref")
    else:
        return replace(base, action="push")
    return replace(base, kind="push", action="push", sha=after, ref=ref, source_ref=ref,
                   branch=branch, tag=tag)


def decide(delivery: Delivery, repo: RepoConfig) -> str | None:
    """Why this delivery starts no run (a short reason), or None when it starts one."""
    if delivery.kind == "ping":
        return "ping"
    if delivery.kind not in ("push", "pull_request"):
        return f"event {delivery.event!r}" + (f" ({delivery.action})" if delivery.action else "")
    if delivery.deleted:
        return "a deleted branch or tag"
    if delivery.kind == "push":
        if delivery.branch is not None and not repo.wants_branch(delivery.branch):
            return f"branch {delivery.branch!r} is not in the repo's branches"
        if delivery.tag is not None and not repo.wants_tag(delivery.tag):
            return f"tag {delivery.tag!r} is not in the repo's tags"
    if delivery.is_fork and repo.fork_prs == "ignore":
        return "pull requests from forks are ignored for this repo"
    return None


def valid_ref_name(name: str) -> bool:
    """git's rules for a ref name (``git check-ref-format``), and no leading '-'."""
    if not name or len(name) > 255 or name.startswith(("-", "/")) or name == "@":
        return False
    if _BAD_REF_CHARS.search(name) or ".." in name or "@{" in name or "//" in name:
        return False
    if name.endswith(("/", ".", ".lock")):
        return False
    return not any(part.startswith(".") or part.endswith(".lock") for part in name.split("/"))


def _ref_name(value: Any, where: str) -> str:
    name = _text(value, where)
    if not valid_ref_name(name):
        raise HookRejected(400, f"{where} is not a valid git ref name")
    return name


def _sha(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _SHA.fullmatch(value):
        raise HookRejected(400, f"{where} is not a commit sha")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HookRejected(400, f"{where} is not a number")
    if not 1 <= value <= MAX_NUMBER:
        raise HookRejected(400, f"{where} is out of range (1 to {MAX_NUMBER})")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 1000:
        raise HookRejected(400, f"{where} is missing or not a string")
    return _storable(value, where)


def _action(value: Any, where: str) -> str:
    """An event's action, echoed in the answer even when it starts nothing."""
    if value is None:
        return "None"
    if not isinstance(value, str) or len(value) > 100 or _CONTROL.search(value):
        raise HookRejected(400, f"{where} is not an action name")
    return _storable(value, where)


def _sender(value: Any, where: str) -> str | None:
    """Who sent it: shown, never trusted; absent or not a string is None."""
    if not isinstance(value, str) or not value:
        return None
    if len(value) > MAX_SENDER or _CONTROL.search(value):
        raise HookRejected(400, f"{where} is not a user name (over {MAX_SENDER} characters"
                                " or control characters)")
    return _storable(value, where)


def _storable(value: str, where: str) -> str:
    # JSON can carry lone surrogates ("\ud800"), which no UTF-8 column can hold.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise HookRejected(400, f"{where} is not valid Unicode") from exc
    return value


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _title(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-")).replace("Github", "GitHub")
