"""app.json declares what a deploy must be given: every variable start-up refuses to go without.

The list is not copied from app/config.py: the test starts the real entry point (`import wsgi`,
as gunicorn, the worker and `flask` do) outside development with nothing set but the add-ons'
DATABASE_URL and REDIS_URL, reads the one-line error, checks that app.json declares the variable
it names as required (or generated), gives it the value a Heroku deploy would have, and starts
again until start-up succeeds.
"""
import json
import os
import re
import secrets
import subprocess
import sys

import pytest

from app.security import api_keys
from app.config import DEFAULTS
from devtools.services import REPO_ROOT

APP_JSON = json.loads((REPO_ROOT / "app.json").read_text())
ADDON_VARS = {"heroku-postgresql": "DATABASE_URL", "heroku-redis": "REDIS_URL"}
CONFIG_ERROR = re.compile(r"^config error: environment: ([A-Z_][A-Z0-9_]*): ", re.M)


def _declared_value(name):
    """What a Heroku deploy from app.json has in `name`: a generated secret, the default, or
    (API_KEYS) the entry `flask keys new` prints, as the description tells the operator."""
    spec = APP_JSON["env"][name]
    if spec.get("generator") == "secret":
        return secrets.token_hex(32)      # Heroku's generator: 64 hex characters
    if name == "API_KEYS":
        return api_keys.config_line("billing", api_keys.new_key(), {"trigger", "push"})
    if "value" in spec:
        return spec["value"]
    return {"PUBLIC_URL": "https://notifications.example", "MAIL_SERVER": "smtp.example",
            "MAIL_DEFAULT_SENDER": "notifications@bank.example"}[name]


def _start(env):
    return subprocess.run([sys.executable, "-c", "import wsgi"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_addons_provide_the_database_and_redis_urls():
    plans = {addon["plan"].split(":")[0] for addon in APP_JSON["addons"]}
    assert set(ADDON_VARS) <= plans
    assert set(APP_JSON["formation"]) == {"web", "worker"}
    procfile = (REPO_ROOT / "Procfile").read_text()
    assert re.search(r"^release: ", procfile, re.M), "the release phase runs the migrations"


@pytest.mark.slow
def test_every_variable_required_outside_development_is_declared_required(base_env):
    base = {k: v for k, v in os.environ.items() if k not in DEFAULTS and k != "PROMETHEUS_MULTIPROC_DIR"}
    env = dict(base, DATABASE_URL=base_env["DATABASE_URL"], REDIS_URL=base_env["REDIS_URL"])
    required = []
    for _ in range(len(DEFAULTS)):
        result = _start(env)
        if result.returncode == 0:
            break
        match = CONFIG_ERROR.search(result.stderr)
        assert match, f"start-up failed without naming a variable:\n{result.stderr[-2000:]}"
        name = match.group(1)
        assert name not in required, f"{name} was given its app.json value and start-up still refuses it: " \
                                     f"{result.stderr.strip()}"
        spec = APP_JSON["env"].get(name)
        assert spec is not None, f"start-up requires {name}; app.json does not declare it"
        assert spec.get("required") or spec.get("generator"), f"start-up requires {name}; app.json makes it optional"
        assert spec.get("description"), f"app.json has no description for {name}"
        required.append(name)
        env[name] = _declared_value(name)
    else:
        raise AssertionError(f"start-up never succeeded; asked for {required}")
    assert result.returncode == 0, result.stderr
    # What the loop found is what app/config.py asks for today; a new requirement extends it.
    assert {"SECRET_KEY", "JWT_SECRET", "API_KEYS"} <= set(required), required


def test_python_version_is_pinned_the_way_the_buildpack_reads_it():
    pinned = (REPO_ROOT / ".python-version").read_text().strip()
    assert re.fullmatch(r"3\.\d+", pinned), pinned   # major version: the buildpack takes its latest patch
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == pinned, "the tests run on another Python"
