"""The §7b derivatives columns of `candles_1m` and `metrics_calculated` (docs/contract.md §6).

Every column is nullable without a default, so on a filled table each `ADD COLUMN` only changes the catalog:
PostgreSQL rewrites no row and holds its lock for an instant (TimescaleDB hypertables, compressed chunks
included, take such columns the same way). Old rows read as null: unknown, as §7b says.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("metrics", "0003_rename_candle_storedcandle"),
    ]

    operations = [
        migrations.AddField(
            model_name="metricbar",
            name="basis",
            field=models.FloatField(null=True),
        ),
        migrations.AddField(
            model_name="metricbar",
            name="funding_apr",
            field=models.FloatField(null=True),
        ),
        migrations.AddField(
            model_name="metricbar",
            name="funding_rate",
            field=models.FloatField(null=True),
        ),
        migrations.AddField(
            model_name="metricbar",
            name="index_price",
            field=models.FloatField(null=True),
        ),
        migrations.AddField(
            model_name="metricbar",
            name="liq_long",
            field=models.FloatField(null=True),
        ),
        migrations.AddField(
            model_name="metricbar",
            name="liq_short",
            field=models.FloatField(null=True),
        ),
        migrations.AddField(
            model_name="metricbar",
            name="mark_price",
            field=models.FloatField(null=True),
        ),
        migrations.AddField(
            model_name="metricbar",
            name="oi",
            field=models.FloatField(null=True),
        ),
        migrations.AddField(
            model_name="metricbar",
            name="oi_change",
            field=models.FloatField(null=True),
        ),
        migrations.AddField(
            model_name="storedcandle",
            name="funding_interval_hours",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="storedcandle",
            name="funding_rate",
            field=models.FloatField(blank=True, help_text="a fraction per funding interval", null=True),
        ),
        migrations.AddField(
            model_name="storedcandle",
            name="index_close",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="storedcandle",
            name="liq_count",
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="storedcandle",
            name="liq_long_quote",
            field=models.DecimalField(blank=True, decimal_places=8, max_digits=38, null=True),
        ),
        migrations.AddField(
            model_name="storedcandle",
            name="liq_short_quote",
            field=models.DecimalField(blank=True, decimal_places=8, max_digits=38, null=True),
        ),
        migrations.AddField(
            model_name="storedcandle",
            name="mark_close",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="storedcandle",
            name="next_funding_time",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="storedcandle",
            name="open_interest",
            field=models.FloatField(blank=True, help_text="contracts", null=True),
        ),
    ]
