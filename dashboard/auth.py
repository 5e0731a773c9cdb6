"""The dashboard's login, required when it is exposed: ``python -m dashboard.auth hash``.

The dashboard acts on the API with its own access (in compose, with the API
token), so whoever reaches its port may launch, cancel and delete jobs. On
loopback that is the person at the machine, and nothing changes. When it
listens beyond loopback (``DORA_DASH_HOST``, the rule of
``dora_core.contracts.hosts``), or when ``DORA_DASH_AUTH`` asks for it, every
request needs a signed-in user: pages redirect to ``/login``, Dash's own
requests (``/_dash-*``) and other non-GET requests answer 401.

Users come from ``DORA_DASH_USERS`` (``alice:<hash>,bob:<hash>``) and/or the
file ``DORA_DASH_USERS_FILE`` (one ``user:<hash>`` a line, ``#`` comments).
A hash is ``scrypt:<N>:<r>:<p>:<salt>:<key>`` (salt and key in unpadded
URL-safe base64: no ``$``, ``,`` or ``:``, so it survives shells, compose
files and the list syntax unquoted); ``python -m dashboard.auth hash [USER]``
prints one for a password typed at a prompt (or one line on stdin).

The session is Flask's signed cookie (HttpOnly, SameSite=Lax, Secure with
``DORA_DASH_COOKIE_SECURE``), signed with ``DORA_DASH_SECRET``; without it a
random key per process is used, so sessions end when the dashboard restarts
and are not shared between several worker processes (gunicorn). The cookie
names the user and a fingerprint of their hash: changing a password or
removing the user (and restarting) ends their sessions.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import logging
import re
import secrets
import sys
import unicodedata
from collections.abc import Mapping
from datetime import timedelta
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import flask

from dora_core.contracts.hosts import is_loopback_host

if TYPE_CHECKING:
    from dashboard.settings import DashboardSettings

log = logging.getLogger(__name__)

LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
# the client side (assets/session.js) reads this on a 401 and opens the login page
LOGIN_HEADER = "X-Dora-Login"
FAILED = "Wrong user name or password."
SIGNED_OUT = "You are signed out."

ALGORITHM = "scrypt"
# 16 MiB and about 50 ms a check: fine for a login, slow for guessing offline
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES, KEY_BYTES = 16, 32
MAX_SCRYPT_MEMORY = 256 * 2**20  # a stored hash may not ask for more than this per check
_USER = re.compile(r"^[^\s:,]+$")
_B64 = re.compile(r"^[A-Za-z0-9_-]+$")


class LoginSetupError(ValueError):
    """The login cannot work as configured (one line, names the variable)."""


# --- password hashes -------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    if not _B64.match(text):
        raise ValueError("not base64")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _password_bytes(password: str) -> bytes:
    # the same characters typed on another system may arrive composed differently
    return unicodedata.normalize("NFC", password).encode("utf-8")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    maxmem = 128 * r * (n + 2 + p) + 2**20
    return hashlib.scrypt(
        _password_bytes(password), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length
    )


def hash_password(password: str) -> str:
    """A self-describing hash of ``password`` with a fresh random salt."""
    if not password:
        raise ValueError("the password is empty")
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES)
    return f"{ALGORITHM}:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}:{_b64(salt)}:{_b64(key)}"


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """(N, r, p, salt, key) of a hash made by :func:`hash_password`; ValueError otherwise.

    The message never repeats the text: a plain password put where a hash
    belongs must not end up in a log.
    """
    parts = stored.strip().split(":")
    problem = "not a hash made by `python -m dashboard.auth hash` (scrypt:N:r:p:salt:key)"
    if len(parts) != 6 or parts[0] != ALGORITHM:
        raise ValueError(problem)
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        raise ValueError(problem) from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or len(salt) < 8 or len(key) < 16:
        raise ValueError(f"{problem}: its parameters are out of range")
    if 128 * r * (n + p) > MAX_SCRYPT_MEMORY:
        raise ValueError(f"{problem}: it asks for more than 256 MiB per check")
    return n, r, p, salt, key


def verify_password(password: str, stored: str) -> bool:
    """Does ``password`` match ``stored``? Constant-time in the key comparison."""
    try:
        n, r, p, salt, key = parse_hash(stored)
    except ValueError:
        return False
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(key)), key)


# --- user lists ------------------------------------------------------------------------


def _parse_entry(entry: str) -> tuple[str, str]:
    """(user, hash) from ``user:hash``; ValueError naming what is wrong, never the hash."""
    user, sep, stored = entry.strip().partition(":")
    if not sep or not user:
        raise ValueError("expected user:hash")
    if not _USER.match(user):
        raise ValueError("a user name has no spaces, ':' or ','")
    try:
        parse_hash(stored)
    except ValueError as err:
        raise ValueError(f"user {user!r}: {err}") from None
    return user, stored.strip()


def _collect(entries: list[tuple[str, str]]) -> dict[str, str]:
    """``{user: hash}`` from (where, entry) pairs; the error names the entry's place."""
    users: dict[str, str] = {}
    for where, entry in entries:
        try:
            user, stored = _parse_entry(entry)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if user in users:
            raise ValueError(f"{where}: user {user!r} is listed twice")
        users[user] = stored
    return users


def parse_users_text(text: str) -> dict[str, str]:
    """``DORA_DASH_USERS``: ``user:hash`` entries separated by commas or newlines."""
    entries = [e for e in re.split(r"[,\n]", text) if e.strip()]
    return _collect([(f"entry {i}", e) for i, e in enumerate(entries, start=1)])


def read_users_file(path: Path) -> dict[str, str]:
    """``DORA_DASH_USERS_FILE``: one ``user:hash`` a line; blank lines and ``#`` comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read it ({getattr(err, 'strerror', None) or err})") from None
    return _collect(
        [
            (f"line {i}", line)
            for i, line in enumerate(lines, start=1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    )


def load_users(settings: DashboardSettings) -> dict[str, str]:
    """Who may sign in, from both sources; LoginSetupError when a login is needed and nobody may.

    Called where the dashboard is built (``dashboard.app.create_app``), so that
    any server running it, not only ``python -m dashboard.app``, refuses.
    """
    users = dict(settings.dash_users)
    if settings.dash_users_file is not None:
        where = f"DORA_DASH_USERS_FILE={str(settings.dash_users_file)!r}"
        try:
            from_file = read_users_file(settings.dash_users_file)
        except ValueError as err:
            raise LoginSetupError(f"{where}: {err}") from None
        both = sorted(from_file.keys() & users.keys())
        if both:
            raise LoginSetupError(
                f"{where}: {', '.join(map(repr, both))} also in DORA_DASH_USERS; list each user once"
            )
        users.update(from_file)
    if not users and settings.auth_required:
        if is_loopback_host(settings.dash_host):
            why = "DORA_DASH_AUTH asks for a login, but no user is configured"
        else:
            why = (
                f"DORA_DASH_HOST={settings.dash_host} exposes the dashboard beyond this machine, "
                "and no user is configured to log in"
            )
        raise LoginSetupError(
            f"{why}: set DORA_DASH_USERS or DORA_DASH_USERS_FILE "
            "(`python -m dashboard.auth hash` makes a password hash), or bind 127.0.0.1"
        )
    return users


# --- the login in front of the Flask server --------------------------------------------


def loopback_peers_only() -> tuple[str, int] | None:
    """Without a login, answer this machine only: a before_request hook.

    ``DORA_DASH_HOST`` is what decides on the login, but another server
    (gunicorn ``--bind 0.0.0.0``) may listen wider than it says. Requests from
    another machine then get 403 instead of an open dashboard. On a loopback
    bind no such request can arrive, so nothing changes there.
    """
    peer = flask.request.remote_addr
    if not peer or is_loopback_host(peer):
        return None
    return (
        f"This dashboard has no login and answers only this machine (request from {peer}): "
        "set DORA_DASH_HOST to the address it listens on, or DORA_DASH_AUTH=1, and "
        "DORA_DASH_USERS.\n",
        403,
    )


def fingerprint(stored: str) -> str:
    """What a session remembers of its user's hash: a new password ends old sessions."""
    return hashlib.sha256(stored.encode("utf-8")).hexdigest()[:20]


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this dashboard, never another site."""
    target = target or "/"
    parts = urlsplit(target)
    if (
        not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or parts.scheme
        or parts.netloc
        or any(ord(c) < 32 for c in target)
        or parts.path in (LOGIN_PATH, LOGOUT_PATH)
    ):
        return "/"
    return target


def login_url(next_path: str | None = None) -> str:
    target = safe_next(next_path)
    return LOGIN_PATH if target == "/" else f"{LOGIN_PATH}?next={quote(target, safe='/')}"


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · DoRA</title>
<style>
body {{ margin: 0; background: #f4f6f9; color: #1f2933;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }}
.bar {{ background: #17233a; color: #fff; height: 52px; padding: 0 24px;
  display: flex; align-items: center; font-size: 17px; }}
.bar b {{ color: #8cc4ff; font-weight: 800; margin-right: 5px; }}
main {{ max-width: 340px; margin: 64px auto; background: #fff; padding: 22px 24px;
  border: 1px solid #e3e8ef; border-radius: 8px; }}
h1 {{ font-size: 20px; margin: 0 0 14px; }}
label {{ display: block; margin: 10px 0 4px; font-weight: 600; }}
input {{ width: 100%; box-sizing: border-box; padding: 7px 9px; font: inherit;
  border: 1px solid #cbd2dc; border-radius: 6px; }}
button {{ margin-top: 16px; width: 100%; padding: 8px; font: inherit; font-weight: 600;
  color: #fff; background: #1f5fa8; border: 0; border-radius: 6px; cursor: pointer; }}
.msg {{ padding: 8px 10px; border-radius: 6px; margin: 0 0 10px; }}
.error {{ background: #fdecea; color: #c0392b; }}
.note {{ background: #e8f0fa; color: #1f5fa8; }}
</style>
</head>
<body>
<div class="bar"><b>DoRA</b> dashboard</div>
<main>
<h1>Sign in</h1>
{message}
<form method="post" action="{action}">
<input type="hidden" name="next" value="{next}">
<label for="login-user">User</label>
<input id="login-user" name="user" value="{user}" autocomplete="username" required autofocus>
<label for="login-password">Password</label>
<input id="login-password" name="password" type="password" autocomplete="current-password"
 required>
<button id="login-submit" type="submit">Sign in</button>
</form>
</main>
</body>
</html>
"""


def login_page(
    next_path: str = "/", user: str = "", error: str | None = None, note: str | None = None
) -> str:
    """The sign-in form; every value in it is escaped (it is text, never markup)."""
    message = ""
    if error:
        message = f'<p id="login-error" class="msg error" role="alert">{escape(error)}</p>'
    elif note:
        message = f'<p id="login-note" class="msg note">{escape(note)}</p>'
    return _PAGE.format(
        message=message,
        action=escape(LOGIN_PATH),
        next=escape(safe_next(next_path)),
        user=escape(user),
    )


class Login:
    """The login in front of one Flask server; ``dashboard.app`` builds it and calls :meth:`install`."""

    def __init__(self, users: Mapping[str, str]):
        self.users = dict(users)
        # an unknown user costs a check too, so the time of an answer tells nothing
        self._decoy = hash_password(secrets.token_urlsafe(16))

    def check(self, user: str, password: str) -> bool:
        stored = self.users.get(user)
        ok = verify_password(password, stored or self._decoy)
        return ok and stored is not None

    def current_user(self) -> str | None:
        """The signed-in user of this request, if its session still names a valid one."""
        user = flask.session.get("user")
        stored = self.users.get(user) if isinstance(user, str) else None
        seen = flask.session.get("v")
        if stored is None or not isinstance(seen, str):
            return None
        return user if hmac.compare_digest(seen, fingerprint(stored)) else None

    def install(self, server: flask.Flask, settings: DashboardSettings) -> None:
        secret = settings.dash_secret
        if not secret:
            log.warning(
                "note: DORA_DASH_SECRET is unset, so sessions are signed with a random key: "
                "they end when the dashboard restarts and are not shared between processes"
            )
            secret = secrets.token_urlsafe(32)
        server.secret_key = secret
        server.config.update(
            # cookies are per host, not per port: two dashboards on one host keep theirs apart
            SESSION_COOKIE_NAME=f"dora_dash_session_{settings.dash_port}",
            SESSION_COOKIE_HTTPONLY=True,
            SESSION_COOKIE_SAMESITE="Lax",
            SESSION_COOKIE_SECURE=settings.dash_cookie_secure,
            PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.dash_session_hours),
        )
        server.before_request(self._require_login)
        server.add_url_rule(LOGIN_PATH, "login", self._login, methods=["GET", "POST"])
        server.add_url_rule(LOGOUT_PATH, "logout", self._logout, methods=["GET", "POST"])

    # --- views ---

    def _require_login(self) -> flask.Response | None:
        request = flask.request
        if request.path in (LOGIN_PATH, LOGOUT_PATH) or self.current_user() is not None:
            return None
        if request.method in ("GET", "HEAD") and not request.path.startswith("/_dash-"):
            here = request.full_path if request.query_string else request.path
            return flask.redirect(login_url(here), 303)
        # Dash's requests and other calls: a status the page script can act on
        response = flask.Response(
            "Sign in first: this dashboard needs a login.\n", 401, mimetype="text/plain"
        )
        response.headers["WWW-Authenticate"] = 'Session realm="DoRA dashboard"'
        response.headers[LOGIN_HEADER] = LOGIN_PATH
        return response

    def _page(self, body: str, status: int = 200) -> flask.Response:
        response = flask.Response(body, status, mimetype="text/html")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        return response

    def _login(self) -> flask.Response:
        request = flask.request
        if request.method == "GET":
            next_path = request.args.get("next", "/")
            if self.current_user() is not None:
                return flask.redirect(safe_next(next_path), 303)
            note = SIGNED_OUT if request.args.get("out") else None
            return self._page(login_page(next_path, note=note))
        origin = request.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.host:
            return flask.Response("Cross-site sign-in refused.\n", 403, mimetype="text/plain")
        user = request.form.get("user", "")
        password = request.form.get("password", "")
        next_path = request.form.get("next", "/")
        if not self.check(user, password):
            return self._page(login_page(next_path, user=user, error=FAILED), 401)
        flask.session.clear()
        flask.session.permanent = True
        flask.session["user"] = user
        flask.session["v"] = fingerprint(self.users[user])
        return flask.redirect(safe_next(next_path), 303)

    def _logout(self) -> flask.Response:
        flask.session.clear()
        return flask.redirect(f"{LOGIN_PATH}?out=1", 303)


# --- python -m dashboard.auth hash [USER] ----------------------------------------------


def _read_password() -> str:
    if not sys.stdin.isatty():  # piped: the first line is the password
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise ValueError("the two passwords differ")
    return first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashboard.auth",
        description="Make a password hash for DORA_DASH_USERS / DORA_DASH_USERS_FILE.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser(
        "hash", help="read a password (prompt, or one line on stdin) and print its hash"
    )
    make.add_argument("user", nargs="?", help="print `user:hash`, a line for the users file")
    args = parser.parse_args(argv)
    if args.user is not None and not _USER.match(args.user):
        print("error: a user name has no spaces, ':' or ','", file=sys.stderr)
        return 2
    try:
        stored = hash_password(_read_password())
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.user}:{stored}" if args.user is not None else stored)
    return 0


if __name__ == "__main__":
    sys.exit(main())
