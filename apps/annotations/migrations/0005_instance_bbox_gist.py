"""A GiST index on each instance's bounding box, so viewport queries find overlaps fast.

The b-tree indexes on (slide, x_min, y_min) and (slide, x_max, y_max) cannot bound both
axes of an overlap test, and PostgreSQL did not use them for viewport queries on 100 000
instances. The GiST index on the box expression answers ``&&`` directly. It exists on
PostgreSQL only; SQLite keeps the plain comparisons.
"""

from django.db import migrations

INDEX_NAME = "instance_bbox_gist"
BOX_EXPRESSION = "box(point(x_min_level0, y_min_level0), point(x_max_level0, y_max_level0))"


def create_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f"CREATE INDEX IF NOT EXISTS {INDEX_NAME} ON annotations_instance USING gist ({BOX_EXPRESSION})"
    )


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX_NAME}")


class Migration(migrations.Migration):

    dependencies = [
        ("annotations", "0004_proposalrun_predictions_file"),
    ]

    operations = [migrations.RunPython(create_index, drop_index)]
