"""Hypertables, compression and retention when TimescaleDB is available; a no-op on plain PostgreSQL.

docs/contract.md §3: the stock PostgreSQL engine is used; this migration checks `pg_available_extensions` and
only then creates the extension and the policies. Plain PostgreSQL relies on the retention task.
"""

from django.conf import settings
from django.db import migrations

TABLES = ("candles_1m", "metrics_calculated")


def timescaledb_available(cursor) -> bool:
    cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    return cursor.fetchone() is not None


def make_hypertables(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        if not timescaledb_available(cursor):
            return
        cursor.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        retention = f"{int(settings.RETENTION_CANDLES_HOURS * 60)} minutes"
        for table in TABLES:
            cursor.execute(
                "SELECT create_hypertable(%s, 'time', chunk_time_interval => interval '6 hours',"
                " migrate_data => true, if_not_exists => true)",
                [table],
            )
            cursor.execute(
                f"ALTER TABLE {table} SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol')"
            )
            cursor.execute(
                "SELECT add_compression_policy(%s, interval '1 hour', if_not_exists => true)", [table]
            )
            cursor.execute(
                f"SELECT add_retention_policy(%s, interval '{retention}', if_not_exists => true)", [table]
            )


class Migration(migrations.Migration):
    dependencies = [("metrics", "0001_initial")]

    operations = [
        migrations.RunPython(make_hypertables, migrations.RunPython.noop, hints={"timeseries_only": True}),
    ]
