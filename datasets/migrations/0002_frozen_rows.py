"""Database triggers that refuse UPDATE of class maps, data set versions and splits.

The models refuse it in `save()`; the triggers make the database itself refuse it too, for
bulk updates and hand-written SQL. PostgreSQL and SQLite (the embedded profile) are covered.
"""

from django.db import migrations

FROZEN_TABLES = ["datasets_classmap", "datasets_datasetversion", "datasets_split"]


def create_triggers(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    for table in FROZEN_TABLES:
        message = f"{table} rows are frozen; make a new version instead"
        if vendor == "postgresql":
            schema_editor.execute(
                f"""
                CREATE OR REPLACE FUNCTION {table}_frozen() RETURNS trigger AS $$
                BEGIN RAISE EXCEPTION '{message}'; END; $$ LANGUAGE plpgsql;
                CREATE TRIGGER {table}_frozen BEFORE UPDATE ON {table}
                FOR EACH ROW EXECUTE FUNCTION {table}_frozen();
                """
            )
        elif vendor == "sqlite":
            schema_editor.execute(
                f"CREATE TRIGGER {table}_frozen BEFORE UPDATE ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END;"
            )


def drop_triggers(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    for table in FROZEN_TABLES:
        if vendor == "postgresql":
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_frozen ON {table};")
            schema_editor.execute(f"DROP FUNCTION IF EXISTS {table}_frozen();")
        elif vendor == "sqlite":
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_frozen;")


class Migration(migrations.Migration):
    dependencies = [("datasets", "0001_initial")]

    operations = [migrations.RunPython(create_triggers, drop_triggers)]
