"""The sign-in throttle: failed sign-ins per user name and per client address, and locks.

``NEPHROWEB_SIGNIN_MAX_FAILURES`` failures for one user name, or
``NEPHROWEB_SIGNIN_MAX_FAILURES_PER_IP`` from one client address, within
``NEPHROWEB_SIGNIN_WINDOW_S`` seconds lock that name or address for
``NEPHROWEB_SIGNIN_LOCK_S`` seconds. A locked attempt is rejected before the password is
checked, so the right password does not help. Names that do not exist are counted and
locked like real ones, so a lock does not tell whether an account exists. Counters and
locks live in the "signin" cache (Redis in production, see nephroweb/settings.py).

The window is fixed: it starts at the first failure and the count expires with it. A
lock starts a new count, so the name or address gets its full number of tries after it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import caches
from redis.exceptions import RedisError

from . import audit

logger = logging.getLogger(__name__)

USER = "user"
CLIENT_ADDRESS = "client_address"


@dataclasses.dataclass(frozen=True)
class Lock:
    """A running lock: its scope (``USER`` or ``CLIENT_ADDRESS``) and the seconds left."""

    scope: str
    remaining_s: float

    @property
    def remaining_minutes(self) -> int:
        return max(1, math.ceil(self.remaining_s / 60))

    def message(self) -> str:
        """Return the message that names what is locked, for how long, and what to do."""
        locked = "for this account" if self.scope == USER else "from this network address"
        return (
            f"Too many failed sign-ins {locked}; try again in {self.remaining_minutes} "
            f"minute{'s' if self.remaining_minutes != 1 else ''} or ask an admin to unlock it."
        )


STORE_UNAVAILABLE_MESSAGE = (
    "Sign-in is unavailable right now: the server cannot reach its store of failed "
    "sign-ins (Redis). Try again in a minute; if this persists, tell your administrator."
)


class StoreUnavailable(Exception):
    """The store of counters and locks (the "signin" cache) cannot be reached."""


def _store_call(function):
    """Turn a Redis error of ``function`` into StoreUnavailable.

    Without its counters the throttle could not stop a password guesser, so sign-in is
    refused while the store is down rather than let through unthrottled.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except RedisError as exc:
            logger.error("Sign-in store unreachable (%s: %s)", type(exc).__name__, exc)
            raise StoreUnavailable(str(exc)) from exc

    return wrapper


def _cache():
    return caches["signin"]


def _key(kind: str, scope: str, value: str) -> str:
    # A digest keeps any typed name (spaces, control characters) a valid cache key.
    return f"{kind}:{scope}:{hashlib.sha256(value.encode()).hexdigest()}"


def _subjects(username: str, ip_address: str | None):
    """Yield (scope, value, limit) of each counter that an attempt touches."""
    # Limitation: anyone with a user name can lock its owner out for LOCK_S seconds.
    if username:
        yield USER, username, settings.NEPHROWEB_SIGNIN_MAX_FAILURES
    if ip_address:
        yield CLIENT_ADDRESS, ip_address, settings.NEPHROWEB_SIGNIN_MAX_FAILURES_PER_IP


@_store_call
def current_lock(username: str, ip_address: str | None) -> Lock | None:
    """Return the lock on ``username`` or on ``ip_address`` that has longest to run, or None."""
    locks = []
    for scope, value, _ in _subjects(username, ip_address):
        until = _cache().get(_key("lock", scope, value))
        if until is not None and until > time.time():
            locks.append(Lock(scope, until - time.time()))
    return max(locks, key=lambda lock: lock.remaining_s, default=None)


def _count_failure(scope: str, value: str) -> int:
    """Add one failure to the counter of ``value`` in ``scope`` and return the new count."""
    cache, key = _cache(), _key("failures", scope, value)
    window_s = settings.NEPHROWEB_SIGNIN_WINDOW_S
    cache.add(key, 0, timeout=window_s)
    try:
        count = cache.incr(key)
    except ValueError:
        # The counter expired between add and incr, so this failure starts a new window.
        cache.set(key, 1, timeout=window_s)
        return 1
    if count == 1:
        # If the key expired between incr's existence check and Redis's INCR, Redis
        # created it again without an expiry.
        cache.touch(key, timeout=window_s)
    return count


def _user_id(username: str) -> int | None:
    """Return the primary key of the user named ``username``, or None when there is none."""
    model = get_user_model()
    return (
        model._default_manager.filter(**{model.USERNAME_FIELD: username})
        .values_list("pk", flat=True).first()
    )


@_store_call
def record_failure(username: str, ip_address: str | None) -> None:
    """Count a failed sign-in, and lock the name or address that reached its limit.

    A new lock writes one ``login_locked`` audit row with the typed name and the address.
    """
    lock_s = settings.NEPHROWEB_SIGNIN_LOCK_S
    for scope, value, limit in _subjects(username, ip_address):
        if _count_failure(scope, value) < limit:
            continue
        # Only the process whose add succeeds writes the row, so a lock is audited once.
        if not _cache().add(_key("lock", scope, value), time.time() + lock_s, timeout=lock_s):
            continue
        _cache().delete(_key("failures", scope, value))
        logger.warning(
            "Sign-in locked for %s %r for %d s after %d failures", scope, value, lock_s, limit
        )
        audit.record(
            audit.Action.LOGIN_LOCKED, username=username,
            target_type=audit.Target.USER if scope == USER else audit.Target.CLIENT_ADDRESS,
            target_id=_user_id(username) if scope == USER else None,
            detail={
                "scope": scope, "failures": limit,
                "window_s": settings.NEPHROWEB_SIGNIN_WINDOW_S, "lock_s": lock_s,
            },
            ip_address=ip_address,
        )


@_store_call
def clear_failures(username: str) -> None:
    """Forget the failures of ``username``, after it signed in."""
    _cache().delete(_key("failures", USER, username))


@_store_call
def unlock(scope: str, value: str, *, by=None) -> bool:
    """Remove the lock and the failure count of ``value`` in ``scope``, on behalf of ``by``.

    Returns whether there was a lock or a failure count to remove. Removing one writes a
    ``login_unlocked`` audit row whose detail names what was removed.
    """
    removed_lock = _cache().delete(_key("lock", scope, value))
    removed_count = _cache().delete(_key("failures", scope, value))
    if not (removed_lock or removed_count):
        return False
    audit.record(
        audit.Action.LOGIN_UNLOCKED, user=by,
        target_type=audit.Target.USER if scope == USER else audit.Target.CLIENT_ADDRESS,
        target_id=_user_id(value) if scope == USER else None,
        detail={
            "username" if scope == USER else "client_address": value,
            "lock_removed": removed_lock, "failures_removed": removed_count,
        },
    )
    return True


# ---------------------------------------------------------------------------- signals


def count_failed_login(sender, credentials, request=None, **kwargs):
    """Count a failed sign-in by the typed name and the client address (``user_login_failed``).

    Every failed ``authenticate`` counts, so the admin site's sign-in page counts too.
    """
    typed = str(credentials.get(get_user_model().USERNAME_FIELD) or "")
    record_failure(typed, audit.client_ip(request) if request is not None else None)


def clear_after_login(sender, request, user, **kwargs):
    """Forget the failures of a user who signed in (``user_logged_in``).

    The password was right and no lock was found. If the store is unreachable, the old
    count stays until its window ends, and the sign-in goes on.
    """
    try:
        clear_failures(user.get_username())
    except StoreUnavailable:
        logger.warning("Failed sign-ins of %r not cleared: the store is unreachable",
                       user.get_username())
