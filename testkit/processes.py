"""Real service processes: gunicorn and the RQ worker, started as the Procfile starts them.

The stream is only real under gunicorn's gevent worker: there the view hands
the client's socket over from gunicorn (app/streams/handoff.py) and the stream
lives on with no greenlet and no generator, written by the process's hub and
watched for a disconnect by a libev watcher (app/streams/sink.py). The Flask
test client only ever gets the generator fallback, so tests, fault scenarios and
benchmarks start the same commands as the Procfile, against a database and a
Redis of their run's own (testkit.database), and talk to them over HTTP on 127.0.0.1.

    ProcessGroup     start_web(env, ...), start_worker(env, ...); stopped together (`with`, or the
                     `processes` fixture of tests/conftest.py for one test)
    WebServer        gunicorn (the repository's gunicorn.conf.py, or any command), its workers' pids
    RQWorker         `python -m workers`
    ServiceProcess   any child in its own process group with its output in a file
    cpu_seconds()    user + system CPU of a process so far
    wait_until()     poll a condition with a deadline (no fixed sleeps)
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import requests

from devtools.services import REPO_ROOT, free_port, spawn
from testkit.config_files import queue_config
from testkit.sse import SSEStream

BIN = Path(sys.executable).parent     # the venv running the tests (.venv or /work/venv)
STREAM_PATH = "/v1/notifications/sse"

# Inherited variables that would change a service's behaviour behind the test's back.
_SCRUBBED = ("PORT", "HOST", "WEB_CONCURRENCY", "WORKER_CONNECTIONS", "ACCESS_LOG", "GRACEFUL_TIMEOUT",
             "QUEUE_CONFIG", "NOTIFICATIONS_CONFIG", "DATABASE_URL", "REDIS_URL", "REDIS_PREFIX",
             "JWT_SECRET", "JWT_PUBLIC_KEY", "JWT_ALGORITHMS", "JWT_AUDIENCE", "JWT_ISSUER", "API_KEYS",
             "CORS_ORIGINS", "PROMETHEUS_MULTIPROC_DIR", "RATE_LIMITS_ENABLED", "METRICS_TOKEN", "PROXY_HOPS")


def cpu_seconds(pid):
    """user + system CPU seconds of one process so far (Linux /proc); 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(predicate, timeout=10.0, interval=0.05, message="condition"):
    """Call `predicate` until it returns something truthy; return that, or fail at the deadline.
    `message` may be a callable, evaluated only on failure."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def kill_when(process, predicate, timeout=60.0, interval=0.002):
    """SIGKILL `process` (its whole group) as soon as predicate() is truthy, or at the deadline, or
    at once if it ended; returns predicate's last value (what was seen when the kill went out)."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline and process.alive:
        seen = predicate()
        if seen:
            break
        time.sleep(interval)
    process.kill()
    return seen


# ------------------------------------------------------------------------------------ processes


class ServiceProcess:
    """One child process with its output in a file (a pipe nobody reads would block it)."""

    name = "process"

    def __init__(self, args, env, log_dir, cwd=REPO_ROOT, name=None):
        self.args, self.env, self.cwd = args, env, cwd
        self.name = name or self.name
        fd, self.log_path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log", dir=log_dir)
        os.close(fd)
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = spawn(self.args, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                              stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def output(self):
        with open(self.log_path, "rb") as log:
            return log.read().decode("utf-8", "replace")

    def stop(self, timeout=10.0):
        """SIGTERM, wait, then SIGKILL the whole process group (gunicorn's workers too)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers; spawn() gave the child its own group
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()

    def kill(self):
        """SIGKILL the whole process group, as a crashed machine would (RQ's scheduler child too)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def _fail(self, why):
        raise RuntimeError(f"{self.name} {why}; its output:\n{self.output()[-4000:]}")


def gunicorn_command(conf="gunicorn.conf.py"):
    """The Procfile's `web`: gunicorn with the repository's settings (or another settings file)."""
    return [str(BIN / "gunicorn"), "-c", str(conf), "wsgi:app"]


class WebServer(ServiceProcess):
    """`gunicorn -c gunicorn.conf.py wsgi:app` on 127.0.0.1:<free port> (HOST=... to bind elsewhere).

    `command(port)` starts something else that answers /healthz with `workers` children (the
    benchmark's peer); `settings` become environment variables of the server. `keepalive` and
    `graceful` None leave SSE_KEEPALIVE_SECONDS and GRACEFUL_TIMEOUT at the shipped defaults."""

    name = "gunicorn"

    def __init__(self, env, log_dir, workers=1, keepalive=1, access_log="", tls=None, command=None,
                 cwd=REPO_ROOT, graceful=2, **settings):
        """tls: (certificate file, key file) to serve HTTPS; the certificate must name 127.0.0.1."""
        self.port = free_port()
        self.scheme, self.verify = ("https", tls[0]) if tls else ("http", True)
        if tls:
            settings["GUNICORN_CMD_ARGS"] = f"--certfile {tls[0]} --keyfile {tls[1]}"
        metrics_dir = tempfile.mkdtemp(prefix="metrics-", dir=log_dir)  # not one left in /tmp per run
        if keepalive is not None:
            settings["SSE_KEEPALIVE_SECONDS"] = keepalive
        if graceful is not None:
            settings["GRACEFUL_TIMEOUT"] = graceful
        env = dict(env, HOST=settings.pop("HOST", "127.0.0.1"), PORT=str(self.port), WEB_CONCURRENCY=str(workers),
                   PROMETHEUS_MULTIPROC_DIR=metrics_dir, ACCESS_LOG=access_log,
                   **{k: str(v) for k, v in settings.items()})
        self.workers = workers
        args = command(self.port) if command else gunicorn_command()
        super().__init__(args, env, log_dir, cwd=cwd)

    @property
    def url(self):
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout=30.0):
        super().start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                self._fail(f"exited with {self.proc.returncode} at start-up")
            try:
                if requests.get(self.url + "/healthz", timeout=1, verify=self.verify).status_code == 200 \
                        and len(self.worker_pids()) == self.workers:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        self._fail(f"did not answer /healthz within {timeout}s")

    def worker_pids(self):
        try:
            return [child.pid for child in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def workers_cpu(self):
        return sum(cpu_seconds(pid) for pid in self.worker_pids())

    def health(self):
        response = requests.get(self.url + "/healthz", timeout=5, verify=self.verify)
        assert response.status_code == 200, response.text
        return response.json()

    def open_streams(self):
        """Streams open in the worker that answers (use with one worker): 0 before the first stream."""
        return self.health().get("streams", 0)

    # -- HTTP helpers -------------------------------------------------------------------------
    def get(self, path, **kwargs):
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("verify", self.verify)
        return requests.get(self.url + path, **kwargs)

    def post(self, path, **kwargs):
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("verify", self.verify)
        return requests.post(self.url + path, **kwargs)

    def delete(self, path, **kwargs):
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("verify", self.verify)
        return requests.delete(self.url + path, **kwargs)

    def stream(self, headers=None, params=None, **kwargs):
        """Open GET /v1/notifications/sse; see SSEStream."""
        return SSEStream(self.url + STREAM_PATH, headers=headers, params=params, verify=self.verify, **kwargs)


class RQWorker(ServiceProcess):
    """`python -m workers`: the RQ worker (dispatch + deliveries queues) and the relay."""

    name = "worker"

    def __init__(self, env, log_dir, queue_config=None):
        env = dict(env)
        if queue_config:
            env["QUEUE_CONFIG"] = queue_config
        super().__init__([sys.executable, "-m", "workers"], env, log_dir)

    def start(self, timeout=30.0, wait=True):
        """Start it; with `wait`, return once it has registered with RQ (it takes jobs from then on)."""
        super().start()
        if not wait:
            return self
        import redis as redis_lib
        client = redis_lib.Redis.from_url(self.env["REDIS_URL"])
        key = f"rq:worker:notif-{self.proc.pid}"
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not self.alive:
                    self._fail(f"exited with {self.proc.returncode} at start-up")
                try:
                    if client.exists(key):
                        return self
                except redis_lib.RedisError:
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        self._fail(f"did not register with RQ within {timeout}s")


class ProcessGroup:
    """Processes started together and stopped together (newest first)."""

    def __init__(self, log_dir=None):
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="stream-tests-")
        self.started = []

    @staticmethod
    def environment(env):
        """The test's env over a scrubbed copy of ours. Rate limits are off unless `env` turns
        them on: these processes serve stream tests that connect and trigger far faster than
        a person would (the limits have tests of their own)."""
        base = {k: v for k, v in os.environ.items() if k not in _SCRUBBED and not k.startswith("SSE_")}
        base.update(PYTHONUNBUFFERED="1", RATE_LIMITS_ENABLED="false")
        base.update(env)
        return base

    def start_web(self, env, **options):
        """gunicorn; options: workers, keepalive, access_log, and any SSE_* setting by name."""
        server = WebServer(self.environment(env), self.log_dir, **options)
        self.started.append(server)
        return server.start()

    def start_worker(self, env, queue_config=None, wait=True):
        """`python -m workers`; `wait=False` returns at once (a test that kills it at its first work)."""
        worker = RQWorker(self.environment(env), self.log_dir, queue_config=queue_config)
        self.started.append(worker)
        return worker.start(wait=wait)

    def stop_all(self):
        while self.started:
            self.started.pop().stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()


@contextlib.contextmanager
def web_and_worker(env, directory, worker_env=None, **web_options):
    """An RQ worker (with a relay that acts within seconds) and a gunicorn, started together and
    stopped together: the services a test module shares. Yields .web and .worker."""
    with ProcessGroup(str(directory)) as group:
        worker = group.start_worker(worker_env or env, queue_config=queue_config(directory))
        web = group.start_web(env, **web_options)
        yield SimpleNamespace(web=web, worker=worker)


def ready(services, idle=True):
    """The shared web server, once its processes are known to have outlived the earlier tests (and,
    with `idle`, once the earlier tests' streams have closed)."""
    for process in (services.web, services.worker):
        assert process.alive, f"{process.name} died in an earlier test:\n{process.output()[-3000:]}"
    if idle:
        wait_until(lambda: services.web.open_streams() == 0, 10, message="streams of an earlier test to close")
    return services.web


# ------------------------------------------------------------------------------------ Redis over TLS


def tls_redis_server(directory):
    """A redis-server speaking only TLS on a free port, with its own CA: (its process, its rediss://
    URL naming the CA), or None where the machine has no TLS-capable redis-server or no openssl."""
    import shutil
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("openssl") is None:
        return None
    cert, key = directory / "redis.pem", directory / "redis-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                    "-out", str(cert), "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    port = free_port()
    proc = spawn([binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--tls-cert-file", str(cert),
                  "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
                  "--save", "", "--appendonly", "no", "--dir", str(directory)],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    try:
        wait_until(lambda: _answers(url), 10, message="the TLS redis-server")
    except AssertionError:
        proc.kill()
        return None          # a redis-server built without TLS
    return proc, url


def _answers(url):
    import redis as redis_lib
    try:
        return redis_lib.Redis.from_url(url, socket_connect_timeout=1).ping()
    except (redis_lib.RedisError, OSError):
        return False
