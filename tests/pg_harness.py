"""A real, throw-away Postgres cluster on loopback, from Debian's `postgresql` package (`make test` installs it).

`initdb` refuses to run as root, so when the tests run as root (CI, containers) the cluster belongs to the
`postgres` OS user: every server program runs through `runuser -u postgres --`, and the temporary directory
(data, unix socket, log) is handed to that user. Loopback connections are trusted; nothing listens elsewhere.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "postgres"
DATABASE = "forgeflow"
INSTALL_HINT = ("Postgres tests need Debian's postgresql package (initdb, pg_ctl): run `make test`, which installs "
                "it, or `apt-get install postgresql`")


class PostgresMissing(RuntimeError):
    pass


def find_bindir() -> Path:
    """The directory of initdb and pg_ctl: `pg_config --bindir` when it knows, else the newest Debian version."""
    candidates = []
    if shutil.which("pg_config"):
        try:
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
            candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(p) for p in sorted(versions, key=lambda p: int(Path(p).parent.name)
                                           if Path(p).parent.name.isdigit() else 0, reverse=True)]
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise PostgresMissing(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalPostgres:
    """One running cluster: `url` is the `forgeflow` database; `new_database()` gives each test a fresh one."""

    bindir: Path
    root: Path
    port: int
    as_postgres: bool
    _count: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return self.url_of(DATABASE)

    def url_of(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if proc.returncode:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr or proc.stdout}\n{log}")
        return proc

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql over the unix socket (no Python driver needed); its output."""
        return self._run("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir),
                         "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-c", statement).stdout

    def new_database(self, name: str | None = None) -> str:
        """A fresh, empty database on this cluster; its SQLAlchemy URL."""
        self._count += 1
        name = name or f"t{os.getpid()}_{self._count}"
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url_of(name)

    def start(self, timeout_s: float = 60) -> None:
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.socket_dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "start", "-w", "-t", str(int(timeout_s)), "-D", str(self.data), "-l", str(self.log),
                  "-o", opts, timeout=timeout_s + 10)

    def kill(self) -> None:
        """Stop at once, as a crash would (no checkpoint, clients cut off)."""
        self._run("pg_ctl", "stop", "-m", "immediate", "-w", "-D", str(self.data))

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> LocalPostgres:
    """initdb into a new temporary directory, start the server on a free loopback port, create `forgeflow`."""
    bindir = find_bindir()
    as_postgres = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="forgeflow-pg-"))
    pg = LocalPostgres(bindir=bindir, root=root, port=_free_port(), as_postgres=as_postgres)
    try:
        pg.socket_dir.mkdir()
        if as_postgres:
            import pwd

            user = pwd.getpwnam(SUPERUSER)
            for path in (root, pg.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        # trust on loopback and the socket only: pg_hba.conf gets exactly these lines from initdb's options
        pg._run("initdb", "-D", str(pg.data), "-U", SUPERUSER, "--auth-local=trust", "--auth-host=trust",
                "-E", "UTF8", "--locale=C", "--no-sync")
        for attempt in range(3):  # the free port may be taken between choosing and binding it
            try:
                pg.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                pg.port = _free_port()
                time.sleep(0.2)
        pg.sql(f"CREATE DATABASE {DATABASE}")
    except BaseException:
        pg.stop()
        raise
    return pg
