"""The sign-in throttle: failed sign-ins lock a user name or a client address, the right
password does not pass a lock, locks end or are removed by an admin, and every failure,
lock and unlock writes its audit row. With REDIS_URL set the counters are in Redis."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.cache import caches
from django.core.management import CommandError, call_command

from apps.accounts import signin_throttle
from apps.accounts.models import AuditEvent

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "pw-for-tests-1"
ACCOUNT_LOCKED = (
    "Too many failed sign-ins for this account; try again in 15 minutes or ask an admin "
    "to unlock it."
)
ADDRESS_LOCKED = (
    "Too many failed sign-ins from this network address; try again in 15 minutes or ask "
    "an admin to unlock it."
)
# Client addresses of this file, on the loopback network and apart from the test
# client's default 127.0.0.1, so that other test files' sign-ins never share a counter.
ADDRESSES = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
USERNAMES = ["alice", "bob", "carol", "dave", "nobody-1", "nobody-2", "nobody-3", "admin-1"]


@pytest.fixture(autouse=True)
def forget_counters(db):
    """Start and end each test with no counter or lock on this file's names and addresses.

    The Redis database is not emptied between tests, so an earlier run could leave some.
    """

    def forget():
        for username in USERNAMES:
            signin_throttle.unlock(signin_throttle.USER, username)
        for address in ADDRESSES:
            signin_throttle.unlock(signin_throttle.CLIENT_ADDRESS, address)

    forget()
    yield
    forget()


def _sign_in(client, username, password, address="127.0.0.2", path="/login/"):
    return client.post(
        path, {"username": username, "password": password}, REMOTE_ADDR=address
    )


def _rows(after_id):
    return [
        (event.username, event.action, event.target_type, event.target_id, event.ip_address)
        for event in AuditEvent.objects.filter(id__gt=after_id).order_by("id")
    ]


def _last_id():
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def _signed_in_user_id(client):
    return client.session.get("_auth_user_id")


# ---------------------------------------------------------------------------- user name


def test_five_failures_lock_account(client, make_user):
    alice = make_user("annotator", username="alice")
    start = _last_id()

    failures = [_sign_in(client, "alice", f"wrong {n}") for n in range(5)]
    right = _sign_in(client, "alice", PASSWORD)

    assert [response.status_code for response in failures] == [200, 200, 200, 200, 429]
    assert right.status_code == 429
    assert ACCOUNT_LOCKED in right.content.decode()
    assert "The user name or password is wrong." not in right.content.decode()
    assert 840 < int(right["Retry-After"]) <= 900
    assert _signed_in_user_id(client) is None
    assert _rows(start) == [("alice", "login_failed", "user", alice.pk, "127.0.0.2")] * 5 + [
        ("alice", "login_locked", "user", alice.pk, "127.0.0.2"),
    ]
    locked = AuditEvent.objects.get(id__gt=start, action="login_locked")
    assert locked.detail == {"scope": "user", "failures": 5, "window_s": 900, "lock_s": 900}
    assert locked.user is None


def test_lock_rejects_before_password_check(client, make_user):
    make_user("annotator", username="alice")
    for n in range(5):
        _sign_in(client, "alice", f"wrong {n}")
    start = _last_id()

    rejected = [_sign_in(client, "alice", "wrong again"), _sign_in(client, "alice", PASSWORD)]

    # A rejected attempt is neither a failure nor a sign-in, so it writes no row.
    assert [response.status_code for response in rejected] == [429, 429]
    assert _rows(start) == []


def test_lock_ends_after_lock_period(client, make_user, settings):
    settings.NEPHROWEB_SIGNIN_MAX_FAILURES = 2
    settings.NEPHROWEB_SIGNIN_LOCK_S = 1
    alice = make_user("annotator", username="alice")
    _sign_in(client, "alice", "wrong 1")
    _sign_in(client, "alice", "wrong 2")
    locked = _sign_in(client, "alice", PASSWORD)

    # The lock's cache entry expires after 1 s.
    time.sleep(1.2)
    after = _sign_in(client, "alice", PASSWORD)

    assert locked.status_code == 429
    assert "try again in 1 minute or ask an admin" in locked.content.decode()
    assert after.status_code == 302
    assert _signed_in_user_id(client) == str(alice.pk)


def test_lock_gives_full_tries_after_it_ends(client, make_user, settings):
    settings.NEPHROWEB_SIGNIN_MAX_FAILURES = 2
    settings.NEPHROWEB_SIGNIN_LOCK_S = 1
    make_user("annotator", username="alice")
    _sign_in(client, "alice", "wrong 1")
    _sign_in(client, "alice", "wrong 2")
    time.sleep(1.2)

    first = _sign_in(client, "alice", "wrong 3")
    second = _sign_in(client, "alice", "wrong 4")

    assert first.status_code == 200
    assert second.status_code == 429


def test_success_resets_counter(client, make_user):
    make_user("annotator", username="alice")
    before = [_sign_in(client, "alice", f"wrong {n}") for n in range(4)]
    right = _sign_in(client, "alice", PASSWORD)
    client.post("/logout/")

    after = [_sign_in(client, "alice", f"wrong {n}") for n in range(5)]

    assert [response.status_code for response in before] == [200] * 4
    assert right.status_code == 302
    assert [response.status_code for response in after] == [200, 200, 200, 200, 429]


def test_guesser_locks_out_owner_elsewhere(client, make_user):
    """Limitation: failures from any address lock the account at every address."""
    make_user("annotator", username="alice")
    for n in range(5):
        _sign_in(client, "alice", f"wrong {n}", address="127.0.0.3")

    owner = _sign_in(client, "alice", PASSWORD, address="127.0.0.4")

    assert owner.status_code == 429
    assert ACCOUNT_LOCKED in owner.content.decode()


def test_unknown_name_locks_like_real_one(client):
    start = _last_id()

    failures = [_sign_in(client, "nobody-1", f"wrong {n}") for n in range(5)]

    # The same responses as for an existing account, so a lock does not reveal accounts.
    assert [response.status_code for response in failures] == [200, 200, 200, 200, 429]
    assert ACCOUNT_LOCKED in failures[-1].content.decode()
    assert _rows(start)[-1] == ("nobody-1", "login_locked", "user", None, "127.0.0.2")


def test_lock_of_one_name_leaves_others(client, make_user):
    make_user("annotator", username="alice")
    bob = make_user("annotator", username="bob")
    for n in range(5):
        _sign_in(client, "alice", f"wrong {n}")

    response = _sign_in(client, "bob", PASSWORD)

    assert response.status_code == 302
    assert _signed_in_user_id(client) == str(bob.pk)


# ---------------------------------------------------------------------------- client address


def test_address_limit_across_usernames(client, make_user, settings):
    settings.NEPHROWEB_SIGNIN_MAX_FAILURES_PER_IP = 3
    dave = make_user("annotator", username="dave")
    start = _last_id()

    failures = [
        _sign_in(client, name, "wrong", address="127.0.0.3")
        for name in ["nobody-1", "nobody-2", "nobody-3"]
    ]
    same_address = _sign_in(client, "dave", PASSWORD, address="127.0.0.3")
    other_address = _sign_in(client, "dave", PASSWORD, address="127.0.0.4")

    assert [response.status_code for response in failures] == [200, 200, 429]
    assert same_address.status_code == 429
    assert ADDRESS_LOCKED in same_address.content.decode()
    assert other_address.status_code == 302
    assert _signed_in_user_id(client) == str(dave.pk)
    assert _rows(start) == [
        ("nobody-1", "login_failed", "user", None, "127.0.0.3"),
        ("nobody-2", "login_failed", "user", None, "127.0.0.3"),
        ("nobody-3", "login_failed", "user", None, "127.0.0.3"),
        ("nobody-3", "login_locked", "client_address", None, "127.0.0.3"),
        ("dave", "login", "user", dave.pk, "127.0.0.4"),
    ]
    locked = AuditEvent.objects.get(id__gt=start, action="login_locked")
    assert locked.detail == {
        "scope": "client_address", "failures": 3, "window_s": 900, "lock_s": 900,
    }


def test_success_keeps_address_counter(client, make_user, settings):
    settings.NEPHROWEB_SIGNIN_MAX_FAILURES_PER_IP = 3
    make_user("annotator", username="dave")
    _sign_in(client, "nobody-1", "wrong", address="127.0.0.3")
    _sign_in(client, "nobody-2", "wrong", address="127.0.0.3")
    right = _sign_in(client, "dave", PASSWORD, address="127.0.0.3")
    client.post("/logout/")

    # A valid account must not let one client reset its count of guesses at other names.
    third = _sign_in(client, "nobody-3", "wrong", address="127.0.0.3")

    assert right.status_code == 302
    assert third.status_code == 429


# ---------------------------------------------------------------------------- admin site


@pytest.fixture
def staff_admin(make_user):
    user = make_user("admin", username="admin-1")
    user.is_staff = True
    user.save()
    return user


def test_admin_site_sign_in_obeys_lock(client, staff_admin):
    for n in range(5):
        _sign_in(client, "admin-1", f"wrong {n}", path="/admin/login/")

    response = _sign_in(client, "admin-1", PASSWORD, path="/admin/login/")
    page = _sign_in(client, "admin-1", PASSWORD)

    assert response.status_code == 200
    assert ACCOUNT_LOCKED in response.content.decode()
    assert page.status_code == 429
    assert _signed_in_user_id(client) is None


def test_admin_action_unlocks_user(client, make_user, staff_admin):
    alice = make_user("annotator", username="alice")
    for n in range(5):
        _sign_in(client, "alice", f"wrong {n}")
    client.force_login(staff_admin)
    start = _last_id()

    response = client.post(
        "/admin/auth/user/",
        {"action": "unlock_sign_in", "_selected_action": [alice.pk]},
        REMOTE_ADDR="127.0.0.5",
    )
    client.post("/logout/")
    right = _sign_in(client, "alice", PASSWORD)

    assert response.status_code == 302
    assert right.status_code == 302
    assert _rows(start)[0] == ("admin-1", "login_unlocked", "user", alice.pk, "127.0.0.5")
    unlocked = AuditEvent.objects.get(id__gt=start, action="login_unlocked")
    assert unlocked.user == staff_admin
    assert unlocked.detail == {"username": "alice", "lock_removed": True, "failures_removed": False}


# ---------------------------------------------------------------------------- unlock_signin


def test_unlock_command_clears_lock(client, make_user, capsys):
    alice = make_user("annotator", username="alice")
    for n in range(5):
        _sign_in(client, "alice", f"wrong {n}")
    start = _last_id()

    call_command("unlock_signin", "alice")
    right = _sign_in(client, "alice", PASSWORD)

    assert capsys.readouterr().out == "unlocked sign-in of user alice\n"
    assert right.status_code == 302
    assert _rows(start) == [
        ("", "login_unlocked", "user", alice.pk, None),
        ("alice", "login", "user", alice.pk, "127.0.0.2"),
    ]


def test_unlock_command_clears_address(client, make_user, settings, capsys):
    settings.NEPHROWEB_SIGNIN_MAX_FAILURES_PER_IP = 2
    dave = make_user("annotator", username="dave")
    _sign_in(client, "nobody-1", "wrong", address="127.0.0.3")
    _sign_in(client, "nobody-2", "wrong", address="127.0.0.3")
    start = _last_id()

    call_command("unlock_signin", "--ip", "127.0.0.3")
    right = _sign_in(client, "dave", PASSWORD, address="127.0.0.3")

    assert capsys.readouterr().out == "unlocked sign-in of client address 127.0.0.3\n"
    assert right.status_code == 302
    event = AuditEvent.objects.get(id__gt=start, action="login_unlocked")
    assert (event.target_type, event.target_id) == ("client_address", None)
    assert event.detail == {
        "client_address": "127.0.0.3", "lock_removed": True, "failures_removed": False,
    }
    assert _signed_in_user_id(client) == str(dave.pk)


def test_unlock_command_clears_failures(client, make_user):
    make_user("annotator", username="alice")
    for n in range(4):
        _sign_in(client, "alice", f"wrong {n}")

    call_command("unlock_signin", "alice")
    next_four = [_sign_in(client, "alice", f"wrong {n}") for n in range(4)]

    assert [response.status_code for response in next_four] == [200] * 4


def test_unlock_command_without_lock_exits_1(capsys):
    start = _last_id()

    with pytest.raises(CommandError) as raised:
        call_command("unlock_signin", "Alice")

    assert raised.value.returncode == 1
    assert str(raised.value) == "Nothing to unlock."
    assert capsys.readouterr().err == (
        "user Alice was not locked and had no failed sign-ins; check the spelling "
        "(user names are case-sensitive).\n"
    )
    assert _rows(start) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "Give a USERNAME, an --ip ADDRESS or both."),
        (["--ip", "10.0.0"], "--ip '10.0.0' is not an IP address; give it as the audit log "
         "shows it, e.g. 192.0.2.7 or 2001:db8::7."),
    ],
)
def test_unlock_command_usage_exits_2(arguments, message):
    with pytest.raises(CommandError) as raised:
        call_command("unlock_signin", *arguments)

    assert raised.value.returncode == 2
    assert str(raised.value) == message


# ---------------------------------------------------------------------------- storage


def test_counters_are_shared_in_redis(client, redis_url, settings):
    """The lock is a Redis key with an expiry, so every web process reads the same lock."""
    import redis

    settings.NEPHROWEB_SIGNIN_MAX_FAILURES = 2
    for n in range(2):
        _sign_in(client, "carol", f"wrong {n}", address="127.0.0.4")
    other_process = redis.Redis.from_url(redis_url)

    lock_keys = list(other_process.scan_iter(match="nephroweb-signin:*:lock:user:*"))

    assert caches["signin"].__class__.__name__ == "RedisCache"
    assert len(lock_keys) == 1
    assert 0 < other_process.ttl(lock_keys[0]) <= 900


def _use_signin_cache(settings, **signin):
    """Replace the "signin" cache with one configured by ``signin``."""
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "signin": signin,
    }


def _file_cache(settings, location, window_s=900):
    _use_signin_cache(
        settings, BACKEND="django.core.cache.backends.filebased.FileBasedCache",
        LOCATION=str(location), TIMEOUT=window_s,
    )


def test_demo_cache_in_files_locks(client, make_user, settings, tmp_path):
    """Without REDIS_URL (the demo) the counters live in files that every process reads."""
    from django.core.cache.backends.filebased import FileBasedCache

    _file_cache(settings, tmp_path / "signin-cache")
    settings.NEPHROWEB_SIGNIN_MAX_FAILURES = 2
    bob = make_user("annotator", username="bob")

    failures = [_sign_in(client, "bob", f"wrong {n}") for n in range(2)]
    right = _sign_in(client, "bob", PASSWORD)
    # A cache object of its own, as manage.py unlock_signin has in its own process.
    other_process = FileBasedCache(str(tmp_path / "signin-cache"), {})

    assert caches["signin"].__class__.__name__ == "FileBasedCache"
    assert [response.status_code for response in failures] == [200, 429]
    assert right.status_code == 429
    assert other_process.has_key(signin_throttle._key("lock", signin_throttle.USER, "bob"))

    call_command("unlock_signin", "bob")
    after = _sign_in(client, "bob", PASSWORD)

    assert after.status_code == 302
    assert _signed_in_user_id(client) == str(bob.pk)


def test_demo_cache_failure_restarts_window(client, make_user, settings, tmp_path):
    """Limitation of the demo's file cache: each failure restarts the counting window.

    With Redis the third failure, 2.4 s after the first, falls in a new 2 s window.
    """
    _file_cache(settings, tmp_path / "signin-cache", window_s=2)
    settings.NEPHROWEB_SIGNIN_MAX_FAILURES = 3
    settings.NEPHROWEB_SIGNIN_WINDOW_S = 2
    make_user("annotator", username="bob")

    statuses = []
    for n in range(3):
        statuses.append(_sign_in(client, "bob", f"wrong {n}").status_code)
        time.sleep(1.2 if n < 2 else 0)

    assert statuses == [200, 200, 429]


# ---------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("NEPHROWEB_SIGNIN_MAX_FAILURES", "0", "NEPHROWEB_SIGNIN_MAX_FAILURES=0 must be at least 1."),
        ("NEPHROWEB_SIGNIN_LOCK_S", "15m", "NEPHROWEB_SIGNIN_LOCK_S='15m' is not a valid int."),
    ],
)
def test_invalid_throttle_setting_stops_start_up(variable, value, message):
    completed = subprocess.run(
        [sys.executable, "-c", "import nephroweb.settings"],
        cwd=REPO, env={**os.environ, variable: value}, capture_output=True, text=True,
        timeout=120,
    )

    assert completed.returncode != 0
    assert message in completed.stderr


# ---------------------------------------------------------------------------- store down


@pytest.fixture
def unreachable_store(settings):
    """Point the "signin" cache at a loopback port that this test reserved and closed."""
    import socket

    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
    _use_signin_cache(
        settings, BACKEND="django.core.cache.backends.redis.RedisCache",
        LOCATION=f"redis://127.0.0.1:{port}/0",
    )
    return port


def test_store_down_refuses_sign_in(client, make_user, unreachable_store):
    make_user("annotator", username="dave")
    start = _last_id()

    response = _sign_in(client, "dave", PASSWORD)

    assert response.status_code == 503
    assert response["Retry-After"] == "60"
    assert signin_throttle.STORE_UNAVAILABLE_MESSAGE in response.content.decode()
    assert "The user name or password is wrong." not in response.content.decode()
    assert _signed_in_user_id(client) is None
    assert _rows(start) == []


def test_store_down_refuses_admin_site_sign_in(client, staff_admin, unreachable_store):
    response = _sign_in(client, "admin-1", PASSWORD, path="/admin/login/")

    assert response.status_code == 200
    assert signin_throttle.STORE_UNAVAILABLE_MESSAGE in response.content.decode()
    assert _signed_in_user_id(client) is None


def test_store_down_unlock_command_exits_3(unreachable_store):
    with pytest.raises(CommandError) as raised:
        call_command("unlock_signin", "dave")

    assert raised.value.returncode == 3
    assert str(raised.value).startswith(
        "Cannot reach the sign-in store (Redis at REDIS_URL): Error 111 connecting to "
        f"127.0.0.1:{unreachable_store}."
    )


def test_store_down_admin_action_says_nothing_unlocked(
    client, make_user, staff_admin, unreachable_store
):
    alice = make_user("annotator", username="alice")
    client.force_login(staff_admin)
    start = _last_id()

    response = client.post(
        "/admin/auth/user/",
        {"action": "unlock_sign_in", "_selected_action": [alice.pk]},
        follow=True,
    )

    assert response.status_code == 200
    messages = [str(message) for message in response.context["messages"]]
    assert len(messages) == 1
    assert messages[0].startswith(
        "Nothing was unlocked: the sign-in store (Redis at REDIS_URL) is unreachable: "
    )
    assert _rows(start) == []


def test_store_down_after_password_check_keeps_sign_in(make_user, unreachable_store, caplog):
    """Clearing the count after a right password fails softly: the count expires anyway."""
    alice = make_user("annotator", username="alice")

    signin_throttle.clear_after_login(sender=None, request=None, user=alice)

    assert "Failed sign-ins of 'alice' not cleared: the store is unreachable" in caplog.text
