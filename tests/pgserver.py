"""A throwaway PostgreSQL server for the tests (and ``bench/load.py --database postgresql``).

Debian's ``postgresql`` package (``make system-deps``) provides the binaries
under ``/usr/lib/postgresql/<version>/bin``; nothing of the system cluster is
used. ``initdb`` makes a fresh cluster in a temp folder, ``pg_ctl`` starts it
on 127.0.0.1 at a free port with its socket in that folder, and ``stop``
removes it all. The server refuses to run as root, so under root it runs as
the package's ``postgres`` user (``nobody`` when there is none) through
``runuser``. Each caller asks for its own empty database (``new_database``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.conftest import free_port

USER = "dora"  # the cluster's superuser, with a random password (host connections need it)
# Speed over durability for tests: the data dies with the session anyway.
FAST = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def server_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``pg_ctl``, else ``pg_ctl``'s
    folder on PATH, else None."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")]
    if found:

        def version(folder: Path) -> tuple[int, ...]:
            return tuple(int(n) for n in re.findall(r"\d+", folder.parent.name)) or (0,)

        return max(found, key=version)
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def unprivileged_user() -> str | None:
    """Who runs the server: None (ourselves) unless we are root, then ``postgres`` or
    ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresMissing("running as root and there is no postgres or nobody user to run as")


@dataclass
class PostgresServer:
    """One running cluster; ``url(name)`` is a SQLAlchemy URL for one of its databases."""

    bin_dir: Path
    base: Path  # data dir, socket, log, password file
    port: int
    password: str
    run_as: str | None
    _made: int = field(default=0, repr=False)

    @classmethod
    def start(cls, durable: bool = False) -> PostgresServer:
        """initdb + pg_ctl start; ``durable`` keeps PostgreSQL's own fsync settings
        (benchmarks), otherwise they are off (tests)."""
        bin_dir = server_bin()
        if bin_dir is None:
            raise PostgresMissing(
                "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/pg_ctl "
                "and no pg_ctl on PATH); `make system-deps` installs them as root"
            )
        run_as = unprivileged_user()
        base = Path(tempfile.mkdtemp(prefix="dora-pg-"))
        server = cls(bin_dir, base, free_port(), secrets.token_hex(16), run_as)
        try:
            (base / "pw").write_text(server.password + "\n")
            if run_as is not None:
                entry = pwd.getpwnam(run_as)
                for path in (base, base / "pw"):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            server._run(
                "initdb",
                "-D",
                str(base / "data"),
                "-U",
                USER,
                f"--pwfile={base / 'pw'}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
            settings = ["listen_addresses=127.0.0.1", *(() if durable else FAST)]
            options = f"-p {server.port} -k {base} " + " ".join(f"-c {s}" for s in settings)
            server._run(
                "pg_ctl",
                "-D",
                str(base / "data"),
                "-l",
                str(base / "server.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            )
        except BaseException:
            server.stop()
            raise
        return server

    def _run(self, tool: str, *args: str) -> None:
        argv = [str(self.bin_dir / tool), *args]
        if self.run_as is not None:
            argv = ["runuser", "-u", self.run_as, "--", *argv]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=self.base)
        if out.returncode != 0:
            log = self.base / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            raise RuntimeError(f"{tool} failed ({out.returncode}): {out.stderr[-2000:]}\n{tail}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "t") -> str:
        """A fresh empty database; returns its URL."""
        self._made += 1
        name = f"{prefix}{self._made}"
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown: open connections are closed) and remove its files."""
        if (self.base / "data" / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.base / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)
