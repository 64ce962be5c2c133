"""PostgreSQL over TLS with `sslmode=verify-full` (issue 19 point 1): the release's migrations, gunicorn
and the worker run against a cluster that refuses connections without TLS, checking its certificate
against a test CA; a wrong root certificate is refused.

The cluster is this test's own (devtools/postgres_server.py: initdb + pg_ctl in a temporary
directory, on a free port), with ssl=on, a certificate for `localhost` signed by the test CA, and
pg_hba rules that admit only TLS connections.
"""
import os
import shutil
import subprocess
import sys
import uuid

import psycopg2
import pytest

from testkit.api import live_notification
from testkit.database import deployment_urls
from testkit.processes import ProcessGroup
from devtools.services import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
ROOT = str(REPO_ROOT)


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory, name):
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key), "-out", str(cert),
            "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def server_certificate(directory, ca_cert, ca_key):
    """A certificate for `localhost` signed by the test CA (what verify-full checks)."""
    cert, key, csr, ext = (directory / n for n in ("server.crt", "server.key", "server.csr", "server.ext"))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    ext.write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "1", "-out", str(cert), "-extfile", str(ext))
    return cert, key


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory):
    """(the server, the CA's certificate, another CA's certificate)."""
    from devtools.postgres_server import PostgresServer, find_binaries
    if find_binaries() is None or shutil.which("openssl") is None:
        pytest.skip("no PostgreSQL binaries or openssl on this machine")
    directory = tmp_path_factory.mktemp("tls-postgres")
    ca_cert, ca_key = make_ca(directory, "test-ca")
    wrong_ca, _ = make_ca(directory, "wrong-ca")
    cert, key = server_certificate(directory, ca_cert, ca_key)
    server = PostgresServer()
    server._run("initdb", "-D", str(server.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    server.initialised = True
    owner = server.data.stat()
    for source, name in ((cert, "server.crt"), (key, "server.key")):
        target = server.data / name
        shutil.copy(source, target)
        os.chown(target, owner.st_uid, owner.st_gid)
        os.chmod(target, 0o600)
    with open(server.data / "postgresql.conf", "a") as conf:
        conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
    # Only TLS connections over TCP: a client that fell back to clear text would be refused.
    (server.data / "pg_hba.conf").write_text(
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n"
        "hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n")
    try:
        server.start()
        yield server, ca_cert, wrong_ca
    finally:
        server.destroy()


def tls_url(server, database, root_cert):
    return (f"postgresql://postgres@localhost:{server.port}/{database}"
            f"?sslmode=verify-full&sslrootcert={root_cert}")


@pytest.fixture(scope="module")
def tls_database(tls_postgres):
    server, ca_cert, _ = tls_postgres
    name = f"notif_tls_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(tls_url(server, "postgres", ca_cert))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    return tls_url(server, name, ca_cert)


def release(env):
    """The Procfile's release phase: `flask --app wsgi migrate`."""
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "migrate"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=ProcessGroup.environment(env))


def test_release_web_and_worker_over_verify_full(clean, processes, tls_database):
    env = dict(clean, **deployment_urls(tls_database))
    done = release(env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "migration(s) applied" in done.stdout
    web = processes.start_web(env)
    processes.start_worker(env)
    assert live_notification(web, "over verify-full")["title"] == "over verify-full"
    with psycopg2.connect(tls_database) as conn, conn.cursor() as cur:
        cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert cur.fetchone() == (True,)
        cur.execute("SELECT count(*) FROM notifications WHERE title = 'over verify-full'")
        assert cur.fetchone() == (1,)



@pytest.mark.parametrize("start", ["release", "worker", "gunicorn"])
def test_a_wrong_root_certificate_is_refused_at_start_up(clean, tls_postgres, tls_database, start):
    """One line naming DATABASE_URL, exit 2, before any request or job could be taken."""
    from devtools.services import free_port
    _, _, wrong = tls_postgres
    url = tls_database.split("?")[0] + f"?sslmode=verify-full&sslrootcert={wrong}"
    env = ProcessGroup.environment(dict(clean, DATABASE_URL=url, PORT=str(free_port()), HOST="127.0.0.1",
                                        WEB_CONCURRENCY="1"))
    command = {"release": [sys.executable, "-m", "flask", "--app", "wsgi", "migrate"],
               "worker": [sys.executable, "-m", "workers"],
               "gunicorn": [os.path.join(os.path.dirname(sys.executable), "gunicorn"), "-c", "gunicorn.conf.py",
                            "wsgi:app"]}[start]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "DATABASE_URL" in line]
    assert len(lines) == 1 and lines[0].startswith(
        "config error: environment: DATABASE_URL: PostgreSQL's TLS certificate is refused: "), done.stderr
    assert "certificate verify failed" in lines[0]
    assert "Booting worker" not in done.stderr
