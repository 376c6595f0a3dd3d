"""Start the real worker and web server as child processes against the test database."""

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

REPO = Path(__file__).resolve().parents[1]


def child_environment(data_dir: Path, **extra: str) -> dict:
    """Environment for a child process that uses the test database and test Redis."""
    db = settings.DATABASES["default"]
    database_url = (
        f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        if db["ENGINE"].endswith("postgresql")
        else f"sqlite:///{db['NAME']}"
    )
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        NEPHROWEB_DATA_DIR=str(data_dir),
        DJANGO_SETTINGS_MODULE="nephroweb.settings",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def celery_worker(env: dict, log_path: Path):
    """A real Celery worker (solo pool) consuming both queues; stopped on exit."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "nephroweb", "worker", "-Q", "gpu,default",
             "--pool", "solo", "--concurrency", "1", "--loglevel", "INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def web_server(env: dict, log_path: Path):
    """Daphne serving the ASGI app (HTTP and websockets) on a free 127.0.0.1 port."""
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
             "nephroweb.asgi:application"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"daphne exited early; see {log_path}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    time.sleep(0.2)
            else:
                raise RuntimeError(f"daphne did not listen within 60 s; see {log_path}")
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
