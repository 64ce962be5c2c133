"""`./dev up`: run the whole service locally, like production, on a machine with only Python.

Why a Python launcher rather than a Procfile tool: it must also start the backing services
(embedded PostgreSQL, a Redis child) when DATABASE_URL/REDIS_URL are unset, run the release step
before the app, and tear everything down in order (app processes first, then the servers) on
Ctrl-C, on SIGTERM, or as soon as one process dies, so nothing is left running behind.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from devtools.services import REPO_ROOT, postgres_url, redis_url, spawn

# HOST: the development secrets are published, so whoever reaches the server can mint tokens;
# it listens on loopback unless HOST says otherwise (gunicorn.conf.py's own default, for a deploy,
# is every interface).
DEFAULTS = {"JWT_SECRET": "dev-secret-change-me-before-production", "API_KEYS": "dev-key", "PORT": "8000",
            "HOST": "127.0.0.1", "DEVELOPMENT": "true"}
_print_lock = threading.Lock()


class _Stop(Exception):
    """Raised from the signal handler so `finally` blocks run the shutdown."""


def _on_signal(signum, _frame):
    raise _Stop(signal.Signals(signum).name)


def say(msg: str) -> None:
    with _print_lock:
        print(f"dev | {msg}", flush=True)


def _pump(name: str, stream) -> None:
    """Copy a child's output line by line, prefixed with its name."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        with _print_lock:
            print(f"{name} | {line}", flush=True)


def _start(name: str, args: list[str], env: dict) -> tuple[subprocess.Popen, threading.Thread]:
    proc = spawn(args, env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pump = threading.Thread(target=_pump, args=(name, proc.stdout), daemon=True)
    pump.start()
    return proc, pump


def _terminate(proc: subprocess.Popen, timeout: float = 25.0) -> None:
    """SIGTERM (graceful for gunicorn and the worker), then SIGKILL the whole process group.

    The wait outlasts gunicorn.conf.py's default graceful_timeout (20 s) so open SSE streams
    get their normal goodbye."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers: gunicorn workers, job work-horses
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def main() -> int:
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    stops, children = [], []
    try:
        database_url, stop = postgres_url()
        stops.append(stop)
        redis, stop = redis_url()
        stops.append(stop)
        env = dict(os.environ, DATABASE_URL=database_url, REDIS_URL=redis, PYTHONUNBUFFERED="1")
        # one metrics directory for web and worker, so /metrics counts both
        metrics_dir = REPO_ROOT / ".devdata" / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
        say(f"DATABASE_URL={database_url}")
        say(f"REDIS_URL={redis}")
        for key, value in DEFAULTS.items():
            if not os.environ.get(key):
                env[key] = value
                say(f"{key}={value}  (development default; set {key} to override)")

        release, pump = _start("release", [sys.executable, "-m", "flask", "--app", "wsgi", "migrate"], env)
        children.append((release, pump))
        if release.wait() != 0:
            say(f"release step `flask --app wsgi migrate` failed (exit {release.returncode})")
            return release.returncode or 1

        procs = {
            "web": _start("web", [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], env),
            "worker": _start("worker", [sys.executable, "-m", "workers"], env),
        }
        children.extend(procs.values())
        say(f"serving on http://{env['HOST']}:{env['PORT']}  (Ctrl-C to stop)")
        while True:
            for name, (proc, _) in procs.items():
                if proc.poll() is not None:
                    say(f"{name} exited with code {proc.returncode}; stopping everything")
                    return proc.returncode or 1
            time.sleep(0.2)
    except _Stop as sig:
        say(f"{sig}: stopping")
        return 0
    finally:
        # Ignore further signals so a second Ctrl-C cannot interrupt the (time-bounded) teardown.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc, pump in reversed(children):
            _terminate(proc)
            pump.join(2)
        for stop in reversed(stops):
            stop()
        if children or stops:
            say("stopped")


if __name__ == "__main__":
    sys.exit(main())
