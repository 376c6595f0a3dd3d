from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"

    def ready(self):
        from django.db.models.signals import post_migrate

        from .roles import ensure_roles

        # Every app's post_migrate: the roles need the permissions of apps migrated later.
        post_migrate.connect(ensure_roles, dispatch_uid="nephroweb-ensure-roles")
