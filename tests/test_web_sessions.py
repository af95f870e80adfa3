"""The web view's sign-in sessions and its guards against other sites' forms, as units:
signed cookies that expire and end when a user's token changes, origins, redirects."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ci_runner.server.sessions import (
    KEY_FILE,
    SESSION_TTL_S,
    Signer,
    local_path,
    same_origin,
    user_of_token,
)

USERS = {"alices-token": "alice", "bobs-token": "bob"}


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer.for_home(tmp_path, USERS)


def test_a_session_names_its_user_until_it_expires(signer: Signer):
    cookie = signer.issue("alice", now=1000.0)
    session = signer.check(cookie, now=1000.0 + SESSION_TTL_S - 1)
    assert session is not None and session.user == "alice"
    assert signer.check(cookie, now=1000.0 + SESSION_TTL_S + 1) is None


def test_a_forged_or_altered_cookie_is_nobody(signer: Signer):
    cookie = signer.issue("alice")
    version, user, expires, nonce, mac = cookie.split(".")
    forged_user = signer.issue("bob").split(".")[1]
    for changed in (f"{version}.{forged_user}.{expires}.{nonce}.{mac}",
                    f"{version}.{user}.{int(expires) + 3600}.{nonce}.{mac}",
                    f"{version}.{user}.{expires}.{nonce}x.{mac}",
                    f"{version}.{user}.{expires}.{nonce}.{mac[:-2]}AA",
                    "", "garbage", "v1.a.b.c.d", "v1.!!.1.n.m"):
        assert signer.check(changed) is None, changed


def test_another_servers_key_does_not_sign_for_this_one(tmp_path: Path, signer: Signer):
    other = Signer.for_home(tmp_path / "other", USERS)
    assert other.check(signer.issue("alice")) is None


def test_a_new_token_or_a_removed_user_ends_their_sessions(tmp_path: Path, signer: Signer):
    cookie = signer.issue("alice")
    rotated = Signer.for_home(tmp_path, {"alices-new-token": "alice", "bobs-token": "bob"})
    assert rotated.check(cookie) is None
    removed = Signer.for_home(tmp_path, {"bobs-token": "bob"})
    assert removed.check(cookie) is None
    same = Signer.for_home(tmp_path, dict(USERS))
    assert same.check(cookie) is not None  # the same key and token: it survives a restart


def test_the_key_is_private_and_kept(tmp_path: Path, signer: Signer):
    key = tmp_path / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes()
    Signer.for_home(tmp_path, USERS)
    assert key.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_the_csrf_token_belongs_to_the_session(signer: Signer):
    one = signer.check(signer.issue("alice"))
    two = signer.check(signer.issue("alice"))
    assert one is not None and two is not None
    assert one.csrf and one.csrf != two.csrf


def test_tokens_are_matched_whole():
    assert user_of_token(USERS, "alices-token") == "alice"
    assert user_of_token(USERS, " bobs-token\n") == "bob"
    for wrong in ("", "alices-toke", "alices-token-", "ALICES-TOKEN"):
        assert user_of_token(USERS, wrong) is None


@pytest.mark.parametrize(("headers", "ok"), [
    ({"host": "ci.example:8080", "origin": "http://ci.example:8080"}, True),
    ({"host": "ci.example:8080", "origin": "https://ci.example:8080"}, True),
    ({"host": "ci.example:8080", "origin": "http://evil.example"}, False),
    ({"host": "ci.example:8080", "origin": "null"}, False),
    ({"host": "ci.example:8080", "referer": "http://ci.example:8080/runs/x"}, True),
    ({"host": "ci.example:8080", "referer": "http://evil.example/ci.example:8080"}, False),
    ({"host": "ci.example:8080"}, True),  # no browser's cross-site POST: the CSRF token decides
    ({"host": "127.0.0.1:9", "origin": "https://ci.example"}, True),  # behind the proxy
])
def test_a_post_must_come_from_this_site(headers: dict[str, str], ok: bool):
    assert same_origin(headers, public_url="https://ci.example") is ok


@pytest.mark.parametrize(("target", "went"), [
    ("/runs/abc?step=x", "/runs/abc?step=x"), (None, "/runs"), ("", "/runs"),
    ("//evil.example/x", "/runs"), ("https://evil.example", "/runs"), ("/\\evil", "/runs"),
    ("runs", "/runs"), ("/runs\r\nSet-Cookie: x", "/runs"),
])
def test_after_sign_in_only_a_page_of_this_site(target: str | None, went: str):
    assert local_path(target) == went
