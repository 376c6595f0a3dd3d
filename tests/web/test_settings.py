"""Invalid environment variables stop the settings module with a message naming them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def import_settings(**variables: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **variables}
    return subprocess.run(
        [sys.executable, "-c", "import nephroweb.settings"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"NEPHROWEB_MASK_GENERATOR": "bogus"},
         "NEPHROWEB_MASK_GENERATOR is invalid: mask_generator is "
         "'bogus', expected one of ['fast', 'reference']."),
        ({"NEPHROWEB_ENCODER_DTYPE": "float8"},
         "NEPHROWEB_ENCODER_DTYPE is invalid: encoder_dtype is 'float8', expected one of "
         "['float32', 'bfloat16']."),
        ({"NEPHROWEB_MASK_GENERATOR": "reference", "NEPHROWEB_ENCODER_DTYPE": "bfloat16"},
         "encoder_dtype 'bfloat16' needs mask_generator 'fast'."),
        ({"NEPHROWEB_PROPOSALS_JSON": "[1"},
         "NEPHROWEB_PROPOSALS_JSON must be a JSON object of proposal settings"),
        ({"NEPHROWEB_TASK_LEASE_S": "1"},
         "NEPHROWEB_TASK_LEASE_S=1 is too short; use at least 3 seconds."),
    ],
)
def test_invalid_variable_stops_start_up(variables, message):
    completed = import_settings(**variables)
    assert completed.returncode != 0
    assert "ImproperlyConfigured" in completed.stderr
    assert message in completed.stderr


def test_valid_variables_start():
    completed = import_settings(NEPHROWEB_MASK_GENERATOR="reference", NEPHROWEB_TASK_LEASE_S="3")
    assert completed.returncode == 0, completed.stderr


PRODUCTION = {
    "NEPHROWEB_PRODUCTION": "1",
    "NEPHROWEB_SECRET_KEY": "k" * 50,
    "NEPHROWEB_ALLOWED_HOSTS": "nephroweb.example.org",
    "DATABASE_URL": "postgres://nephroweb@db.invalid:5432/nephroweb",
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"NEPHROWEB_DEBUG": "1"}, "NEPHROWEB_DEBUG must be off in production."),
        ({"NEPHROWEB_SECRET_KEY": ""}, "NEPHROWEB_SECRET_KEY must be set in production."),
        ({"NEPHROWEB_SECRET_KEY": "short"},
         "NEPHROWEB_SECRET_KEY has 5 characters; production needs at least 50 random ones."),
        ({"NEPHROWEB_ALLOWED_HOSTS": "*"},
         "NEPHROWEB_ALLOWED_HOSTS must list host names in production, not '*'."),
        ({"DATABASE_URL": ""}, "NEPHROWEB_PRODUCTION needs DATABASE_URL to name a PostgreSQL"),
    ],
)
def test_unsafe_production_settings_refuse_to_start(changes, message):
    completed = import_settings(**{**PRODUCTION, **changes})
    assert completed.returncode != 0
    assert message in completed.stderr


def test_production_settings_are_safe():
    env = {**os.environ, **PRODUCTION}
    env.pop("NEPHROWEB_DEBUG", None)
    completed = subprocess.run(
        [sys.executable, "-c",
         "import nephroweb.settings as s; print(s.DEBUG, s.SESSION_COOKIE_SECURE, "
         "s.CSRF_COOKIE_SECURE, 'django.middleware.csrf.CsrfViewMiddleware' in s.MIDDLEWARE)"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["False", "True", "True", "True"]


def test_manage_py_names_refusal_in_one_line():
    env = {**os.environ, **PRODUCTION, "NEPHROWEB_SECRET_KEY": "short"}
    completed = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )

    assert completed.returncode == 1
    assert completed.stderr == (
        "nephroweb: configuration refused: NEPHROWEB_SECRET_KEY has 5 characters; "
        "production needs at least 50 random ones.\n"
    )
