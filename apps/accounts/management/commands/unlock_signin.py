"""``manage.py unlock_signin [USERNAME] [--ip ADDRESS]``: end a sign-in lock early.

Removes the lock and the failure count of a user name, of a client address, or both, and
writes a ``login_unlocked`` audit row for each. Exit status 0 when something was removed,
1 when neither was locked nor had failures, 2 on an invalid command line, 3 when the
sign-in store (Redis) cannot be reached.
"""

import ipaddress

from django.core.management.base import BaseCommand, CommandError

from apps.accounts import signin_throttle


def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise CommandError(
            f"--ip {value!r} is not an IP address; give it as the audit log shows it, "
            "e.g. 192.0.2.7 or 2001:db8::7.",
            returncode=2,
        ) from None


class Command(BaseCommand):
    help = "Unlock sign-in for a user name and/or a client address locked by failed sign-ins."

    def add_arguments(self, parser):
        parser.add_argument(
            "username", nargs="?", default="",
            help="User name as typed at sign-in (case-sensitive).",
        )
        parser.add_argument("--ip", default="", help="Client address locked by failed sign-ins.")

    def handle(self, *args, **options):
        subjects = []
        if options["username"]:
            subjects.append((signin_throttle.USER, options["username"]))
        if options["ip"]:
            subjects.append((signin_throttle.CLIENT_ADDRESS, _address(options["ip"])))
        if not subjects:
            raise CommandError("Give a USERNAME, an --ip ADDRESS or both.", returncode=2)

        removed = 0
        for scope, value in subjects:
            label = "user" if scope == signin_throttle.USER else "client address"
            try:
                unlocked = signin_throttle.unlock(scope, value)
            except signin_throttle.StoreUnavailable as exc:
                raise CommandError(
                    f"Cannot reach the sign-in store (Redis at REDIS_URL): {exc}", returncode=3
                ) from exc
            if unlocked:
                removed += 1
                self.stdout.write(f"unlocked sign-in of {label} {value}")
            else:
                self.stderr.write(
                    f"{label} {value} was not locked and had no failed sign-ins; "
                    "check the spelling (user names are case-sensitive)."
                )
        if removed == 0:
            raise CommandError("Nothing to unlock.", returncode=1)
