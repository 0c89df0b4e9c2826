"""A throw-away PostgreSQL server for lab tests (Debian's ``postgresql`` package).

``PostgresServer(data_dir, listen=("10.77.0.1",), netns="vlmn-hub")`` runs
``initdb`` and ``pg_ctl`` as the ``postgres`` user in a fresh directory, listening on
the given TCP addresses (inside the network namespace, if one is given) and on a
Unix socket in the directory, which the test process reaches from any namespace.
One database and one password-protected role are created for voiceline::

    with PostgresServer(tmp / "pg", listen=("10.77.0.1",), netns="vlmn-hub") as pg:
        pg.url("10.77.0.1")   # what the nodes use (TCP, SCRAM password)
        pg.local_url()        # what the test uses (Unix socket)

Standard library only.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Self

DB_NAME = "voiceline"
DB_USER = "voiceline"
PORT = 5432


class PostgresError(RuntimeError):
    """initdb, pg_ctl or psql failed; the message carries its output."""


def postgres_bindir() -> Path:
    """The newest installed server's bin directory (/usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        raise PostgresError("PostgreSQL server is not installed (Debian package postgresql; run scripts/setup.sh)")
    return Path(found[-1]).parent


class PostgresServer:
    def __init__(self, data_dir: Path, listen: tuple[str, ...] = ("127.0.0.1",), netns: str | None = None,
                 allow_from: str = "127.0.0.1/32", port: int = PORT) -> None:
        self.base = Path(data_dir)
        self.data = self.base / "data"
        self.socket_dir = self.base / "socket"
        self.log_path = self.base / "postgres.log"
        self.listen = listen
        self.netns = netns
        self.allow_from = allow_from
        self.port = port
        self.password = secrets.token_hex(12)
        self._started = False

    def _as_postgres(self, cmd: list[str], timeout: float = 60.0) -> str:
        full = ["runuser", "-u", "postgres", "--", *cmd]
        if self.netns:
            full = ["ip", "netns", "exec", self.netns, *full]
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise PostgresError(f"{' '.join(cmd[:2])} failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
        return proc.stdout

    def start(self) -> Self:
        bindir = postgres_bindir()
        if self.base.exists():
            shutil.rmtree(self.base)
        self.socket_dir.mkdir(parents=True)
        owner = pwd.getpwnam("postgres")
        for path in (self.base, self.socket_dir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        if not self.base.parent.stat().st_mode & 0o001:
            raise PostgresError(f"{self.base.parent} must be traversable by the postgres user (mode o+x)")
        self._as_postgres([str(bindir / "initdb"), "-D", str(self.data), "--auth-local=peer",
                           "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8",
                           "--username=postgres"])
        # Only what the lab needs: the superuser locally, voiceline by password.
        (self.data / "pg_hba.conf").write_text(
            "local all postgres peer\n"
            f"local {DB_NAME} {DB_USER} scram-sha-256\n"
            f"host {DB_NAME} {DB_USER} {self.allow_from} scram-sha-256\n"
        )
        options = (f"-c listen_addresses={','.join(self.listen)} -c port={self.port} "
                   f"-c unix_socket_directories={self.socket_dir} -c fsync=off -c max_connections=50")
        self._as_postgres([str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path),
                           "-o", options, "-w", "-t", "60", "start"], timeout=90)
        self._started = True
        self.psql(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{self.password}'")
        self.psql(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
        return self

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket; psql's unaligned output."""
        return self._as_postgres(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                  "-h", str(self.socket_dir), "-p", str(self.port), "-d", database, "-c", sql])

    def url(self, host: str) -> str:
        """SQLAlchemy URL over TCP with the password (what a node's engine uses)."""
        return f"postgresql+psycopg://{DB_USER}:{self.password}@{host}:{self.port}/{DB_NAME}"

    def local_url(self) -> str:
        """SQLAlchemy URL over the Unix socket (reachable from any network namespace)."""
        return (f"postgresql+psycopg://{DB_USER}:{self.password}@/{DB_NAME}"
                f"?host={self.socket_dir}&port={self.port}")

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._as_postgres([str(postgres_bindir() / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                           "-w", "-t", "30", "stop"], timeout=60)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
