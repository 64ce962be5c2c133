"""Configuration: the default files fit SPEC; a bad file or variable stops start-up with one line."""
import os
import subprocess
import sys
import textwrap

import pytest

from app.config import load_settings
from app.errors import ConfigError
from testkit.identity import API_KEY, JWT_SECRET
from devtools.services import REPO_ROOT, free_port

REPO = str(REPO_ROOT)
DEFAULT_NOTIFICATIONS = os.path.join(REPO, "notifications.yaml")
DEFAULT_QUEUE = os.path.join(REPO, "queue.yaml")
AUTH = {"JWT_SECRET": JWT_SECRET, "API_KEYS": API_KEY, "DEVELOPMENT": "true"}

GOOD_NOTIFICATIONS = """\
channels:
  system: {enabled: true}
  email: {enabled: true}
groups:
  chat:
    aliases: [chats]
    events:
      message_received:
        channels: [system, email]
"""

GOOD_QUEUE = """\
queues:
  dispatch: d
  deliveries: e
retry:
  attempts: 3
  backoff: [1, 2]
batch:
  users_per_chunk: 10
  max_user_ids: 100
"""


def settings_with(tmp_path, notifications=GOOD_NOTIFICATIONS, queue=GOOD_QUEUE, **env):
    n_path, q_path = tmp_path / "notifications.yaml", tmp_path / "queue.yaml"
    n_path.write_text(textwrap.dedent(notifications))
    q_path.write_text(textwrap.dedent(queue))
    environ = dict(AUTH, NOTIFICATIONS_CONFIG=str(n_path), QUEUE_CONFIG=str(q_path), **env)
    return load_settings(environ=environ), str(n_path), str(q_path)


# ---------------------------------------------------------------- the default files


def test_default_files_make_spec_examples_valid():
    settings = load_settings(AUTH, environ={"NOTIFICATIONS_CONFIG": DEFAULT_NOTIFICATIONS,
                                            "QUEUE_CONFIG": DEFAULT_QUEUE})
    domain = settings["DOMAIN"]
    # SPEC's trigger example: type "chats", event "message_received"
    chat = domain.group("chats")
    assert chat is not None and chat.name == "chat"
    assert domain.group("chat") is chat
    assert "message_received" in chat.events
    assert "system" in chat.events["message_received"].channels
    assert domain.group("no-such-group") is None
    # SPEC's groups and channels
    assert {"chat", "task", "security"} <= set(domain.groups)
    assert {"system", "email", "sms"} <= set(domain.channels)
    # security alerts may not be switched off
    assert domain.groups["security"].events and all(e.locked for e in domain.groups["security"].events.values())
    # only marketing asks for consent before an email or SMS
    assert [g.name for g in domain.groups.values() if g.requires_consent] == ["marketing"]
    assert all(e.requires_consent for e in domain.groups["marketing"].events.values())
    assert domain.retry_attempts >= 1 and domain.queues["dispatch"] and domain.queues["deliveries"]


def test_good_tmp_files_load(tmp_path):
    settings, _, _ = settings_with(tmp_path)
    domain = settings["DOMAIN"]
    assert domain.group("chats").name == "chat"
    assert domain.retry_attempts == 3 and domain.retry_backoff == (1, 2)


# ---------------------------------------------------------------- broken notifications.yaml


@pytest.mark.parametrize("content, key, problem", [
    ("channels: [system\ngroups: {}\n", "line", "not valid YAML"),
    ("channels:\n  system: {}\n groups: x\n", "line", "not valid YAML"),
    ("- just\n- a list\n", "(file)", "mapping"),
    ("groups:\n  chat:\n    events:\n      a: {channels: [system]}\n", "channels", "missing"),
    ("channels: [system]\ngroups: {}\n", "channels", "mapping"),
    ("channels:\n  email: {}\ngroups: {}\n", "channels.system", "missing"),
    ("channels:\n  system: {}\n", "groups", "missing"),
    ("channels:\n  system: {}\ngroups:\n  chat:\n    events:\n      message_received:\n"
     "        channels: [system, pigeon]\n",
     "groups.chat.events.message_received.channels", "pigeon"),
    ("channels:\n  system: {}\ngroups:\n  chat:\n    events:\n      message_received: {}\n",
     "groups.chat.events.message_received.channels", "missing"),
    ("channels:\n  system: {}\ngroups:\n  chat:\n    events:\n      message_received:\n"
     "        channels: system\n",
     "groups.chat.events.message_received.channels", "list"),
    ("channels:\n  system: {}\ngroups:\n  chat: {}\n", "groups.chat.events", "missing"),
    ("channels:\n  system: {}\ngroups:\n  chat:\n    aliases: [x]\n    events: {}\n"
     "  task:\n    aliases: [x]\n    events: {}\n", "groups.task.aliases", "two groups"),
    ("channels:\n  system: {}\ngroups:\n  chat:\n    retention_days: -1\n    events: {}\n",
     "groups.chat.retention_days", "days"),
    ("channels:\n  system: {}\ngroups:\n  ads:\n    requires_consent: yes please\n    events: {}\n",
     "groups.ads.requires_consent", "true or false"),
    ("channels:\n  system: {}\ngroups:\n  ads:\n    requires_consent: true\n    events:\n      offer:\n"
     "        channels: [system]\n        locked: true\n", "groups.ads.events.offer.locked", "requires_consent"),
])
def test_broken_notifications_yaml_names_file_and_key(tmp_path, content, key, problem):
    with pytest.raises(ConfigError) as caught:
        settings_with(tmp_path, notifications=content)
    message = str(caught.value)
    path = str(tmp_path / "notifications.yaml")
    assert path in message
    assert key in message
    assert problem in message
    assert "\n" not in message


def test_missing_file_names_it(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=dict(AUTH, NOTIFICATIONS_CONFIG=missing, QUEUE_CONFIG=DEFAULT_QUEUE))
    assert missing in str(caught.value) and "not found" in str(caught.value)


# ---------------------------------------------------------------- broken queue.yaml


@pytest.mark.parametrize("replace, by, key, problem", [
    ("attempts: 3", "attempts: 0", "retry.attempts", "greater than zero"),
    ("attempts: 3", "attempts: -2", "retry.attempts", "greater than zero"),
    ("attempts: 3", "attempts: three", "retry.attempts", "whole number"),
    ("attempts: 3", "attempts: true", "retry.attempts", "whole number"),
    ("  attempts: 3\n", "", "retry.attempts", "missing"),
    ("backoff: [1, 2]", "backoff: [1, -2]", "retry.backoff[1]", ">= 0"),
    ("backoff: [1, 2]", "backoff: 5", "retry.backoff", "list"),
    ("  deliveries: e\n", "", "queues.deliveries", "missing"),
    ("users_per_chunk: 10", "users_per_chunk: 0", "batch.users_per_chunk", "greater than zero"),
])
def test_broken_queue_yaml_names_file_and_key(tmp_path, replace, by, key, problem):
    assert replace in GOOD_QUEUE
    with pytest.raises(ConfigError) as caught:
        settings_with(tmp_path, queue=GOOD_QUEUE.replace(replace, by))
    message = str(caught.value)
    assert str(tmp_path / "queue.yaml") in message
    assert key in message and problem in message


# ---------------------------------------------------------------- broken environment


@pytest.mark.parametrize("env, key", [
    ({"DB_POOL_SIZE": "many"}, "DB_POOL_SIZE"),
    ({"DB_POOL_SIZE": "-1"}, "DB_POOL_SIZE"),
    ({"DB_POOL_TIMEOUT": "0"}, "DB_POOL_TIMEOUT"),
    ({"MAX_CONTENT_LENGTH": "1MB"}, "MAX_CONTENT_LENGTH"),
    ({"MAIL_USE_TLS": "maybe"}, "MAIL_USE_TLS"),
    ({"JWT_SECRET": ""}, "JWT_SECRET"),
    ({"API_KEYS": " , "}, "API_KEYS"),
    ({"JWT_ALGORITHMS": "HS256,none"}, "JWT_ALGORITHMS"),
    ({"JWT_SECRET": "", "JWT_PUBLIC_KEY": "/no/such/key.pem"}, "JWT_PUBLIC_KEY"),
])
def test_broken_environment_names_the_variable(env, key):
    environ = dict(AUTH, NOTIFICATIONS_CONFIG=DEFAULT_NOTIFICATIONS, QUEUE_CONFIG=DEFAULT_QUEUE, **env)
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    assert str(caught.value).startswith("config error: environment: " + key + ":")


# ---------------------------------------------------------------- start-up as a process


def start_env(base_env, **extra):
    env = dict(os.environ, **base_env)
    env.update(extra)
    return env


def run_import(env):
    return subprocess.run([sys.executable, "-c", "from wsgi import app; print('started')"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)


def assert_one_clean_line(stderr, *fragments):
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.slow
def test_import_with_good_config_starts(base_env):
    result = run_import(start_env(base_env))
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("content, key", [
    ("channels: [system\n", "line 2"),
    ("channels:\n  system: {}\ngroups:\n  chat:\n    events:\n      message_received:\n"
     "        channels: [system, fax]\n", "groups.chat.events.message_received.channels"),
    ("groups: {}\n", "channels"),
])
def test_import_with_bad_notifications_yaml_exits_2_with_one_line(base_env, tmp_path, content, key):
    bad = tmp_path / "broken.yaml"
    bad.write_text(content)
    result = run_import(start_env(base_env, NOTIFICATIONS_CONFIG=str(bad)))
    assert result.returncode == 2
    assert "started" not in result.stdout
    assert_one_clean_line(result.stderr, str(bad), key)


@pytest.mark.slow
def test_import_with_bad_queue_yaml_exits_2(base_env, tmp_path):
    bad = tmp_path / "queue.yaml"
    bad.write_text(GOOD_QUEUE.replace("attempts: 3", "attempts: 0"))
    result = run_import(start_env(base_env, QUEUE_CONFIG=str(bad)))
    assert result.returncode == 2
    assert_one_clean_line(result.stderr, str(bad), "retry.attempts")


@pytest.mark.slow
def test_import_with_bad_environment_exits_2(base_env):
    result = run_import(start_env(base_env, DB_POOL_SIZE="lots"))
    assert result.returncode == 2
    assert_one_clean_line(result.stderr, "environment", "DB_POOL_SIZE")


@pytest.mark.slow
def test_gunicorn_refuses_to_start_on_bad_config(base_env, tmp_path):
    """The Procfile's web process: no half-started server, one line, exit 2."""
    bad = tmp_path / "broken.yaml"
    bad.write_text("channels: {}\n")
    env = start_env(base_env, NOTIFICATIONS_CONFIG=str(bad), PORT=str(free_port()), HOST="127.0.0.1",
                    WEB_CONCURRENCY="1")
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    result = subprocess.run([gunicorn, "-c", "gunicorn.conf.py", "wsgi:app"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if str(bad) in line] == [
        f"config error: {bad}: channels.system: is missing (the in-app channel is required)"]
    assert "Booting worker" not in result.stderr


# ---------------------------------------------------------------- development secrets (Issue 16 point 5)

STRONG_SECRET = "s" * 48
STRONG_KEY = "k" * 43
PRODUCTION = {"DEVELOPMENT": "false", "SECRET_KEY": "p" * 48, "JWT_SECRET": STRONG_SECRET,
              "API_KEYS": STRONG_KEY, "AUDIT_HMAC_KEY": "prod:" + "a" * 48}


def run_flask(env, *args):
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_production_secrets_start(base_env):
    result = run_import(start_env(base_env, **PRODUCTION))
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("bad, key", [
    ({"JWT_SECRET": "dev-secret-change-me-before-production"}, "JWT_SECRET"),
    ({"JWT_SECRET": JWT_SECRET}, "JWT_SECRET"),
    ({"JWT_SECRET": "x" * 31}, "JWT_SECRET"),
    ({"API_KEYS": "dev-key"}, "API_KEYS"),
    ({"API_KEYS": f"{STRONG_KEY},{API_KEY}"}, "API_KEYS"),
    ({"API_KEYS": "k" * 31}, "API_KEYS"),
    ({"API_KEYS": "ci:" + __import__("hashlib").sha256(b"dev-key").hexdigest() + ":trigger"}, "API_KEYS"),
    ({"SECRET_KEY": "x" * 31}, "SECRET_KEY"),
    ({"SECRET_KEY": "dev-only-secret-key-never-use-in-production-0123456789"}, "SECRET_KEY"),
    ({"SECRET_KEY": ""}, "SECRET_KEY"),
    ({"AUDIT_HMAC_KEY": ""}, "AUDIT_HMAC_KEY"),
    ({"AUDIT_HMAC_KEY": "prod:" + "a" * 31}, "AUDIT_HMAC_KEY"),
    ({"AUDIT_HMAC_KEY": "dev:dev-only-audit-hmac-key-never-use-in-production-0123"}, "AUDIT_HMAC_KEY"),
], ids=["dev-jwt", "test-jwt", "short-jwt", "dev-key", "test-key", "short-key", "hashed-dev-key", "short-secret",
        "dev-secret-key", "no-secret-key", "no-audit-key", "short-audit-key", "dev-audit-key"])
def test_development_secrets_are_refused_outside_development(base_env, bad, key):
    """`flask --app wsgi` (the release step) and a plain import: one line naming the variable, exit 2."""
    env = start_env(base_env, **dict(PRODUCTION, **bad))
    for result in (run_import(env), run_flask(env, "routes")):
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert_one_clean_line(result.stderr, "environment", key)
    # never the value itself
    assert all(value not in result.stderr for value in bad.values() if value)


@pytest.mark.slow
def test_gunicorn_refuses_development_secrets(base_env):
    env = start_env(base_env, **dict(PRODUCTION, JWT_SECRET="dev-secret-change-me-before-production"),
                    PORT=str(free_port()), HOST="127.0.0.1", WEB_CONCURRENCY="1")
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    result = subprocess.run([gunicorn, "-c", "gunicorn.conf.py", "wsgi:app"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if "JWT_SECRET" in line] == [
        "config error: environment: JWT_SECRET: is a published development value; set a secret of your own "
        "(or DEVELOPMENT=true on a developer machine)"]
    assert "Booting worker" not in result.stderr


@pytest.mark.slow
def test_development_allows_the_development_values(base_env):
    env = start_env(base_env, DEVELOPMENT="true", JWT_SECRET="dev-secret-change-me-before-production",
                    API_KEYS="dev-key", SECRET_KEY="")
    result = run_import(env)
    assert result.returncode == 0, result.stderr


def test_rs256_only_needs_no_long_hmac_secret():
    """The 32-byte rule is for HS256 secrets: a deploy on RS256 alone sets no JWT_SECRET."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    settings = load_settings(environ=dict(PRODUCTION, JWT_SECRET="", JWT_PUBLIC_KEY=pem,
                                          NOTIFICATIONS_CONFIG=DEFAULT_NOTIFICATIONS, QUEUE_CONFIG=DEFAULT_QUEUE))
    assert settings["JWT_ALGORITHMS"] == ["RS256"]


@pytest.mark.parametrize("env", [{"API_KEYS": "billing:" + "0" * 64 + ":trigger+everything"},
                                 {"API_KEYS": "Billing Dept:" + "0" * 64 + ":trigger"},
                                 {"API_KEYS": "key-x:" + "0" * 64 + ":trigger"},
                                 {"API_KEYS": f"a:{'0' * 64}:trigger,b:{'0' * 64}:push"},
                                 {"API_KEYS": "", "API_KEYS_FILE": "/no/such/keys"},
                                 {"JWT_MAX_LIFETIME_SECONDS": "0"}])
def test_bad_key_settings_name_the_variable(env):
    environ = dict(AUTH, NOTIFICATIONS_CONFIG=DEFAULT_NOTIFICATIONS, QUEUE_CONFIG=DEFAULT_QUEUE, **env)
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    assert caught.value.key in env


@pytest.mark.slow
def test_start_up_warns_without_audience_or_issuer_outside_development(base_env):
    """aud/iss stay optional (the SPEC's tokens carry neither), but a deploy is told."""
    warned = run_import(start_env(base_env, **PRODUCTION))
    assert warned.returncode == 0 and "neither JWT_AUDIENCE nor JWT_ISSUER is set" in warned.stderr
    quiet = run_import(start_env(base_env, **PRODUCTION, JWT_ISSUER="https://idp.example"))
    assert quiet.returncode == 0 and "JWT_AUDIENCE" not in quiet.stderr
    development = run_import(start_env(base_env))
    assert development.returncode == 0 and "JWT_AUDIENCE" not in development.stderr


# ---------------------------------------------------------------- stream settings (Issue 16 point 6)


@pytest.mark.slow
def test_keepalive_above_the_spec_is_refused(base_env):
    """The SPEC promises a keep-alive at least every 20 s; a longer interval is a config error."""
    environ = dict(AUTH, NOTIFICATIONS_CONFIG=DEFAULT_NOTIFICATIONS, QUEUE_CONFIG=DEFAULT_QUEUE)
    assert load_settings(environ=dict(environ, SSE_KEEPALIVE_SECONDS="20"))["SSE_KEEPALIVE_SECONDS"] == 20
    result = run_import(start_env(base_env, SSE_KEEPALIVE_SECONDS="21"))
    assert result.returncode == 2
    assert "started" not in result.stdout
    assert_one_clean_line(result.stderr, "environment", "SSE_KEEPALIVE_SECONDS", "20 s")
