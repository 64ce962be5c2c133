"""The systemd units in deploy/ load: `systemd-analyze verify` reads each as systemd would
(unknown keys, bad values, missing ExecStart binaries, the release dependency), and the
hardening holds (`systemd-analyze security --offline` exposure at most SECURITY_THRESHOLD).

The units name /opt/notifications (the install path docs/deploy-platforms.md gives); the copy
checked here names this checkout instead, whose .venv has the same bin/ entries, so verify's
check that every ExecStart exists and is executable is a real one.
"""
import shutil
import subprocess

import pytest

from devtools.services import REPO_ROOT

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
UNITS = ("notifications-web.service", "notifications-worker.service", "notifications-release.service")
INSTALL_PATH = "/opt/notifications"
SECURITY_THRESHOLD = 20  # exposure 2.0 of 10 (the option counts tenths); systemd calls < 5 "OK"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")]


@pytest.fixture
def units(tmp_path):
    for name in UNITS:
        text = (REPO_ROOT / "deploy" / name).read_text()
        assert INSTALL_PATH in text
        (tmp_path / name).write_text(text.replace(INSTALL_PATH, str(REPO_ROOT)))
    return tmp_path


def _analyze(*args, cwd):
    return subprocess.run([SYSTEMD_ANALYZE, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_units_verify_without_a_warning(units):
    result = _analyze("verify", *[f"./{name}" for name in UNITS], cwd=units)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == "", "systemd ignores something in a unit: " + result.stderr


def test_a_missing_binary_fails_verify(units):
    """verify checks what the test relies on it checking: the ExecStart paths."""
    web = units / "notifications-web.service"
    web.write_text(web.read_text().replace("/bin/gunicorn ", "/bin/no-such-gunicorn "))
    result = _analyze("verify", "./notifications-web.service", cwd=units)
    assert result.returncode != 0 and "no-such-gunicorn" in result.stderr


@pytest.mark.parametrize("name", UNITS)
def test_units_are_hardened(units, name):
    result = _analyze("security", "--offline=yes", f"--threshold={SECURITY_THRESHOLD}", f"./{name}", cwd=units)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_web_and_worker_migrate_first_and_share_the_metrics_directory():
    texts = {name: (REPO_ROOT / "deploy" / name).read_text() for name in UNITS}
    assert "flask --app wsgi migrate" in texts["notifications-release.service"]
    for name in ("notifications-web.service", "notifications-worker.service"):
        assert "Requires=notifications-release.service" in texts[name]
        assert "After=notifications-release.service" in texts[name]
        assert "Environment=PROMETHEUS_MULTIPROC_DIR=/run/notifications" in texts[name]
