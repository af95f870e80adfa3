"""Who is looking at the web view: a person signs in with their API token (one of
``server.users``) and gets a session cookie; the token itself is never stored in the
browser nor written in a URL.

The cookie is a signed value, ``v1.<user>.<expires>.<nonce>.<mac>``: HMAC-SHA256 under
a key kept in ``CI_RUNNER_HOME/web-session.key`` (made once, mode 0600, so sessions
outlive a restart), over those fields and the user's current token. Changing a
user's token in the config, or removing the user, ends their sessions; a session
also ends ``SESSION_TTL_S`` after sign-in. The cookie is HttpOnly and SameSite=Strict
(Secure when the page is served over https).

Forms that change something carry a CSRF token derived from the session (an HMAC of
the cookie), and a POST whose ``Origin`` (or, without one, ``Referer``) names another
site is refused before anything else is looked at.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

COOKIE = "ci_runner_session"
SESSION_TTL_S = 12 * 3600.0
KEY_FILE = "web-session.key"


@dataclass(frozen=True)
class Session:
    """A signed-in person (``user``) and the CSRF token of their forms."""

    user: str
    csrf: str
    expires_at: float


def user_of_token(user_tokens: Mapping[str, str], given: str) -> str | None:
    """The user whose token ``given`` is; every token is compared, in constant time,
    so the time taken does not tell which one matched (as the API does)."""
    found = None
    raw = given.strip().encode()
    for token, user in user_tokens.items():
        if hmac.compare_digest(raw, token.encode()):
            found = user
    return found if raw else None


class Signer:
    """Makes and checks session cookies; ``user_tokens`` is ``server.users`` (token ->
    user), read again on each check so a changed config ends sessions."""

    def __init__(self, key: bytes, user_tokens: Mapping[str, str]) -> None:
        self._key = key
        self._token_of = {user: token for token, user in user_tokens.items()}

    @classmethod
    def for_home(cls, home: Path, user_tokens: Mapping[str, str]) -> Signer:
        return cls(_load_key(home / KEY_FILE), user_tokens)

    def issue(self, user: str, *, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + SESSION_TTL_S)
        fields = f"v1.{_b64(user.encode())}.{expires}.{secrets.token_urlsafe(12)}"
        return f"{fields}.{self._mac(fields, user)}"

    def check(self, cookie: str | None, *, now: float | None = None) -> Session | None:
        """The session ``cookie`` holds, or None: absent, forged, expired, or its user's
        token changed since."""
        if not cookie or cookie.count(".") != 4:
            return None
        fields, _, mac = cookie.rpartition(".")
        version, user_b64, expires, _nonce = fields.split(".")
        try:
            user = _unb64(user_b64).decode()
            expires_at = float(int(expires))
        except ValueError:
            return None
        if version != "v1" or user not in self._token_of:
            return None
        if not hmac.compare_digest(mac, self._mac(fields, user)):
            return None
        if expires_at <= (time.time() if now is None else now):
            return None
        csrf = _b64(hmac.new(self._key, b"csrf:" + cookie.encode(), hashlib.sha256).digest())
        return Session(user=user, csrf=csrf, expires_at=expires_at)

    def _mac(self, fields: str, user: str) -> str:
        # The user's token is in the MAC: a new token invalidates every old session.
        message = f"{fields}|{self._token_of.get(user, '')}".encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())


def same_origin(headers: Mapping[str, str], *, public_url: str | None = None) -> bool:
    """Whether a POST comes from a page of this site: its ``Origin`` (else ``Referer``)
    names the host it was sent to (or ``public_url``'s). A request naming neither is
    not a browser's cross-site one (browsers send ``Origin`` with every POST) and is
    left to the CSRF token."""
    claimed = headers.get("origin")
    if claimed is None:
        referer = headers.get("referer")
        if referer is None:
            return True
        claimed = referer
    if claimed == "null":
        return False
    parts = urlsplit(claimed)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    host = headers.get("host", "")
    allowed = {host.lower()}
    if public_url:
        allowed.add(urlsplit(public_url).netloc.lower())
    return parts.netloc.lower() in allowed


def same_token(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def local_path(target: str | None, default: str = "/runs") -> str:
    """``target`` if it is a path on this site (``/runs/ID``), else ``default``: a sign-in
    form's ``next`` must not send anyone elsewhere (``//evil.example``, ``https:...``)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(c in target for c in "\r\n\\") or urlsplit(target).netloc:
        return default
    return target


def _load_key(path: Path) -> bytes:
    """The signing key at ``path``, made (32 random bytes, mode 0600) if missing; made
    aside and linked in place, so two servers starting at once agree on one key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        aside = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
        finally:
            aside.unlink()
    key = path.read_bytes()
    if len(key) < 32:
        raise OSError(f"{path} holds no session key (it is {len(key)} bytes): delete it,"
                      " a new one is made at the next start (everyone signs in again)")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from exc
