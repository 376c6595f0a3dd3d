"""A PostgreSQL trigger that keeps the audit log append-only below the application.

The trigger rejects every DELETE and every UPDATE of ``accounts_auditevent``, except the
one update that deleting a user needs: setting ``user_id`` to NULL (the foreign key's
SET_NULL) with every other column unchanged. TRUNCATE is not a row operation, so the
test database can still be emptied between tests. SQLite, the demo's database, gets no
trigger and relies on the model's checks alone.
"""

from django.db import migrations

CREATE_SQL = """
CREATE OR REPLACE FUNCTION accounts_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.user_id IS NULL
            AND (to_jsonb(NEW) - 'user_id') = (to_jsonb(OLD) - 'user_id') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'Audit event % is append-only: % is not allowed.', OLD.id, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER accounts_auditevent_append_only
    BEFORE UPDATE OR DELETE ON accounts_auditevent
    FOR EACH ROW EXECUTE FUNCTION accounts_auditevent_append_only();
"""

DROP_SQL = """
DROP TRIGGER IF EXISTS accounts_auditevent_append_only ON accounts_auditevent;
DROP FUNCTION IF EXISTS accounts_auditevent_append_only();
"""


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE_SQL, params=None)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_SQL, params=None)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_audit_event")]

    operations = [migrations.RunPython(create_trigger, drop_trigger)]
