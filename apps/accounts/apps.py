from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"

    def ready(self):
        from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
        from django.db.models.signals import post_migrate

        from . import audit, signin_throttle
        from .roles import ensure_roles

        # Every app's post_migrate: the roles need the permissions of apps migrated later.
        post_migrate.connect(ensure_roles, dispatch_uid="nephroweb-ensure-roles")
        user_logged_in.connect(audit.record_login, dispatch_uid="nephroweb-audit-login")
        user_login_failed.connect(
            audit.record_login_failed, dispatch_uid="nephroweb-audit-login-failed"
        )
        # After the audit receivers, so that a lock's row follows the failure that set it.
        user_login_failed.connect(
            signin_throttle.count_failed_login, dispatch_uid="nephroweb-signin-count-failure"
        )
        user_logged_in.connect(
            signin_throttle.clear_after_login, dispatch_uid="nephroweb-signin-clear-failures"
        )
        user_logged_out.connect(audit.record_logout, dispatch_uid="nephroweb-audit-logout")
