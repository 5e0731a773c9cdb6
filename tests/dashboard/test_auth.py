"""The dashboard's login (dashboard.auth): hashes, user lists, and the gate in front of Flask.

The gate is driven through Flask's test client: pages redirect to the login,
Dash's requests answer 401, the session cookie's flags, a forged or stale
cookie, a password change. No API is needed: nothing here gets past the
login to a page that would call one, except the layout, which calls none.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import flask
import pytest
from flask.sessions import SecureCookieSessionInterface

from dashboard import auth
from dashboard.app import create_app
from dashboard.settings import DashboardSettings

PASSWORD = "correct horse battery staple"


def _fixed_hash(password: str, salt: bytes) -> str:
    """The stored-hash text built by hand with hashlib (scrypt N=2**14, r=8, p=1, 32 bytes,
    URL-safe base64 without padding): an independent check of the format, and a fixed salt
    so the parametrized test ids are the same in every process (pytest-xdist compares them)."""
    import base64
    import hashlib

    key = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    text = [base64.urlsafe_b64encode(b).decode().rstrip("=") for b in (salt, key)]
    return f"scrypt:16384:8:1:{text[0]}:{text[1]}"


HASH = _fixed_hash(PASSWORD, bytes(range(16)))
DEAD_API = "http://127.0.0.1:9"  # nothing listens; no test here reaches it
PORT = 8123
COOKIE = f"dora_dash_session_{PORT}"


# --- hashes ----------------------------------------------------------------------------


def test_a_hash_verifies_its_password_only() -> None:
    made = auth.hash_password(PASSWORD)
    assert made.startswith("scrypt:16384:8:1:")
    for stored in (made, HASH):  # ours, and one built by hand with hashlib
        assert auth.verify_password(PASSWORD, stored)
        assert not auth.verify_password(PASSWORD + " ", stored)
        assert not auth.verify_password("", stored)
    # a fresh salt each time: the same password never gives the same text
    assert auth.hash_password(PASSWORD) != made


def test_the_hash_text_survives_shells_compose_and_the_list_syntax() -> None:
    made = auth.hash_password(PASSWORD)
    for unsafe in "$,\"' \n=+/":
        assert unsafe not in made
    assert len(made.split(":")) == 6


def test_unicode_passwords_match_however_they_are_composed() -> None:
    stored = auth.hash_password("caf\u00e9")  # é as one code point
    assert auth.verify_password("cafe\u0301", stored)  # e + combining accent


@pytest.mark.parametrize(
    "stored",
    [
        "",
        PASSWORD,  # a plain password where a hash belongs
        "pbkdf2:1:2:3:abc:def",
        HASH.replace("16384", "1000"),  # N not a power of two
        HASH.replace(":8:", ":0:"),
        HASH.replace("scrypt:16384", "scrypt:1048576").replace(":8:", ":16:"),  # 2 GiB a check
        HASH[:-4] + "$$$$",
        HASH + ":extra",
    ],
)
def test_a_bad_hash_is_refused_and_never_repeated(stored: str) -> None:
    with pytest.raises(ValueError) as err:
        auth.parse_hash(stored)
    if stored:
        assert stored not in str(err.value)
    assert not auth.verify_password(PASSWORD, stored)


def test_the_hash_command_reads_a_piped_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert auth.main(["hash", "alice"]) == 0
    user, stored = capsys.readouterr().out.strip().split(":", 1)
    assert user == "alice" and auth.verify_password(PASSWORD, stored)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert auth.main(["hash"]) == 2
    assert "empty" in capsys.readouterr().err


def test_the_hash_command_prompts_twice_at_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty())
    answers = iter([PASSWORD, PASSWORD, PASSWORD, "typo"])
    monkeypatch.setattr(auth.getpass, "getpass", lambda prompt: next(answers))
    assert auth.main(["hash"]) == 0
    assert auth.verify_password(PASSWORD, capsys.readouterr().out.strip())
    assert auth.main(["hash"]) == 2
    assert "differ" in capsys.readouterr().err


# --- user lists ------------------------------------------------------------------------


def test_users_from_the_list_and_from_a_file(tmp_path: Path) -> None:
    other = auth.hash_password("other")
    assert auth.parse_users_text(f"alice:{HASH}, bob:{other},") == {"alice": HASH, "bob": other}
    users_file = tmp_path / "users"
    users_file.write_text(f"# dashboard users\n\ncarol:{HASH}\n  dave:{other}\n")
    assert auth.read_users_file(users_file) == {"carol": HASH, "dave": other}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("alice", "entry 1: expected user:hash"),
        (f"alice:{HASH},:{HASH}", "entry 2: expected user:hash"),
        (f"al ice:{HASH}", "entry 1: a user name"),
        ("alice:hunter2", "entry 1: user 'alice': not a hash"),
        (f"alice:{HASH},alice:{HASH}", "entry 2: user 'alice' is listed twice"),
    ],
)
def test_a_bad_user_list_names_the_entry(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(problem)) as err:
        auth.parse_users_text(text)
    assert "hunter2" not in str(err.value)


def test_a_bad_users_file_names_the_line(tmp_path: Path) -> None:
    users_file = tmp_path / "users"
    users_file.write_text(f"# comment\nalice:{HASH}\n\nbob:hunter2\n")
    with pytest.raises(ValueError, match=r"^line 4: user 'bob': not a hash") as err:
        auth.read_users_file(users_file)
    assert "hunter2" not in str(err.value)
    with pytest.raises(ValueError, match="cannot read it"):
        auth.read_users_file(tmp_path / "missing")


def test_load_users_merges_both_sources_and_refuses_a_user_in_both(tmp_path: Path) -> None:
    users_file = tmp_path / "users"
    users_file.write_text(f"bob:{HASH}\n")
    both = DashboardSettings(dash_users=f"alice:{HASH}", dash_users_file=users_file)
    assert set(auth.load_users(both)) == {"alice", "bob"}
    twice = DashboardSettings(dash_users=f"bob:{HASH}", dash_users_file=users_file)
    with pytest.raises(auth.LoginSetupError, match="'bob' also in DORA_DASH_USERS"):
        auth.load_users(twice)


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        ({"dash_host": "0.0.0.0"}, "DORA_DASH_HOST=0.0.0.0 exposes the dashboard"),
        ({"dash_host": "192.0.2.1", "dash_auth": False}, "DORA_DASH_HOST=192.0.2.1"),
        ({"dash_auth": True}, "DORA_DASH_AUTH asks for a login"),
    ],
)
def test_a_login_with_nobody_to_sign_in_is_refused(settings: dict, variable: str) -> None:
    with pytest.raises(auth.LoginSetupError, match=variable) as err:
        create_app(DEAD_API, settings=DashboardSettings(**settings))
    assert "DORA_DASH_USERS" in str(err.value) and "\n" not in str(err.value)


# --- the gate --------------------------------------------------------------------------


def _app(**settings: Any) -> flask.Flask:
    values = {"dash_auth": True, "dash_port": PORT, "dash_users": f"alice:{HASH}", **settings}
    return create_app(DEAD_API, settings=DashboardSettings(**values)).server


@pytest.fixture(scope="module")
def server() -> flask.Flask:
    return _app(dash_secret="s" * 32)


def _sign_in(client: Any, user: str = "alice", password: str = PASSWORD, **form: str) -> Any:
    return client.post("/login", data={"user": user, "password": password, **form})


@pytest.mark.parametrize(
    "path", ["/", "/runs/3", "/compare?runs=1,2", "/download/runs/1/adapter.zip"]
)
def test_pages_redirect_to_the_login_and_come_back_after_it(server: flask.Flask, path: str) -> None:
    client = server.test_client()
    answer = client.get(path)
    assert answer.status_code == 303
    target = answer.headers["Location"]
    assert target.startswith("/login")
    form = client.get(target)
    assert form.status_code == 200 and b'id="login-user"' in form.data
    next_path = flask.Request.from_values(target).args.get("next", "/")
    assert next_path == path
    signed_in = _sign_in(client, next=next_path)
    assert (signed_in.status_code, signed_in.headers["Location"]) == (303, path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/_dash-update-component"),
        ("GET", "/_dash-layout"),
        ("GET", "/_dash-dependencies"),
        ("GET", "/_dash-component-suites/dash/dcc/dash_core_components.js"),
        ("POST", "/runs/3"),
    ],
)
def test_dash_requests_are_401_not_a_redirect(server: flask.Flask, method: str, path: str) -> None:
    answer = server.test_client().open(path, method=method, json={})
    assert answer.status_code == 401
    assert answer.headers["X-Dora-Login"] == "/login"
    assert answer.headers["WWW-Authenticate"].startswith("Session")


def test_a_session_opens_everything_and_its_cookie_is_httponly_and_lax(server: flask.Flask) -> None:
    client = server.test_client()
    answer = _sign_in(client)
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert "Expires=" in cookie  # a permanent session: DORA_DASH_SESSION_HOURS
    layout = client.get("/_dash-layout")
    assert layout.status_code == 200 and b"sign-out" in layout.data
    assert client.get("/_dash-dependencies").status_code == 200
    index = client.get("/")
    assert index.status_code == 200 and b"session.js" in index.data
    # already signed in: the login page sends you on
    assert client.get("/login?next=/compare").headers["Location"] == "/compare"


def test_secure_cookies_when_asked() -> None:
    answer = _sign_in(_app(dash_cookie_secure=True).test_client())
    assert "Secure" in answer.headers["Set-Cookie"]


def test_a_wrong_password_or_user_says_so_without_saying_which(server: flask.Flask) -> None:
    client = server.test_client()
    wrong_password = _sign_in(client, password="nope")
    wrong_user = _sign_in(client, user="mallory")
    for answer in (wrong_password, wrong_user):
        assert answer.status_code == 401
        assert auth.FAILED.encode() in answer.data
        assert "Set-Cookie" not in answer.headers
    assert wrong_password.data.replace(b"alice", b"mallory") == wrong_user.data
    assert client.get("/_dash-layout").status_code == 401


def test_the_login_page_shows_what_was_typed_as_text() -> None:
    evil = '"><script>window.__xss=1</script><b>x</b>'
    page = auth.login_page(next_path="/runs/1", user=evil, error=auth.FAILED)
    assert "<script>" not in page and "<b>x" not in page
    assert "&lt;script&gt;" in page and "&quot;&gt;" in page


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.test/",
        "//evil.test/x",
        "/\\evil.test",
        "evil",
        "/login",
        "/logout?x",
        "/\r\nx",
    ],
)
def test_no_redirect_to_another_site_after_signing_in(server: flask.Flask, target: str) -> None:
    assert auth.safe_next(target) == "/"
    answer = _sign_in(server.test_client(), next=target)
    assert answer.headers["Location"] == "/"


def test_a_cross_site_sign_in_is_refused(server: flask.Flask) -> None:
    client = server.test_client()
    answer = client.post(
        "/login",
        data={"user": "alice", "password": PASSWORD},
        headers={"Origin": "https://evil.test"},
    )
    assert answer.status_code == 403 and "Set-Cookie" not in answer.headers
    same = client.post(
        "/login",
        data={"user": "alice", "password": PASSWORD},
        headers={"Origin": "http://localhost"},
    )
    assert same.status_code == 303


def _forged(secret: str, payload: dict) -> str:
    app = flask.Flask("forger")
    app.secret_key = secret
    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    assert serializer is not None
    return serializer.dumps(payload)


def test_a_forged_or_stale_cookie_is_sent_to_the_login(server: flask.Flask) -> None:
    valid = {"user": "alice", "v": auth.fingerprint(HASH), "_permanent": True}
    client = server.test_client()
    client.set_cookie(COOKIE, _forged("s" * 32, valid))  # the right key: a real session
    assert client.get("/_dash-layout").status_code == 200
    for cookie in (
        _forged("another key entirely", valid),  # signed with another key
        _forged("s" * 32, {**valid, "v": "0" * 20}),  # an older password's session
        _forged("s" * 32, {**valid, "user": "bob"}),  # no such user
        _forged("s" * 32, {"user": "alice"}),
        "garbage",
    ):
        client.set_cookie(COOKIE, cookie)
        assert client.get("/_dash-layout").status_code == 401
        assert client.get("/").status_code == 303


def test_sign_out_ends_the_session(server: flask.Flask) -> None:
    client = server.test_client()
    _sign_in(client)
    assert client.get("/_dash-layout").status_code == 200
    out = client.get("/logout")
    assert (out.status_code, out.headers["Location"]) == (303, "/login?out=1")
    assert "Max-Age=0" in out.headers["Set-Cookie"]
    assert auth.SIGNED_OUT.encode() in client.get("/login?out=1").data
    assert client.get("/_dash-layout").status_code == 401


def test_the_host_check_still_comes_first(server: flask.Flask) -> None:
    client = server.test_client()
    assert client.get("/", headers={"Host": "rebound.example"}).status_code == 403
    assert client.get("/login", headers={"Host": "rebound.example"}).status_code == 403


def test_on_loopback_without_dora_dash_auth_nothing_changes() -> None:
    server = create_app(DEAD_API, settings=DashboardSettings(dash_host="127.0.0.1")).server
    client = server.test_client()
    index = client.get("/")
    assert index.status_code == 200 and b"session.js" not in index.data
    layout = client.get("/_dash-layout")
    assert layout.status_code == 200 and b"sign-out" not in layout.data
    assert b"login-user" not in client.get("/login").data  # Dash's index, as for any path
    assert "Set-Cookie" not in index.headers


def test_without_a_login_another_machine_is_refused_whatever_the_bind() -> None:
    """gunicorn --bind 0.0.0.0 with DORA_DASH_HOST left at loopback: no open dashboard."""
    server = create_app(DEAD_API, settings=DashboardSettings(dash_host="127.0.0.1")).server
    client = server.test_client()
    for peer in ("192.0.2.7", "10.0.0.2", "2001:db8::1"):
        answer = client.get("/", environ_base={"REMOTE_ADDR": peer})
        assert answer.status_code == 403 and b"DORA_DASH_AUTH" in answer.data
        assert (
            client.post(
                "/_dash-update-component", json={}, environ_base={"REMOTE_ADDR": peer}
            ).status_code
            == 403
        )
    for peer in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert client.get("/", environ_base={"REMOTE_ADDR": peer}).status_code == 200
    # with a login, another machine's requests meet the login instead
    signed = _app().test_client()
    assert signed.get("/", environ_base={"REMOTE_ADDR": "192.0.2.7"}).status_code == 303
