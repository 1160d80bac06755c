"""The 10 presets of docs/contract.md §8, frozen as they were when this migration was written.

(slug, name, description, expression, severity, direction); global, enabled, bar_close, cooldown 300 s.
"""

from django.db import migrations

PRESETS = [
    (
        "futures_big_bull_60",
        "60 Big Bull",
        "sustained momentum over multiple timeframes",
        "change_1h > 1.6 and change_1d < 15 and change_8h > change_1h and change_1d > change_8h and volume_1h > 500_000 and volume_8h > 5_000_000 and 6 * volume_1h > volume_8h and 16 * volume_1h > volume_1d",
        "warning",
        "bull",
    ),
    (
        "futures_big_bear_60",
        "60 Big Bear",
        "sustained downward momentum",
        "change_1h < -1.6 and change_1d > -15 and change_8h < change_1h and change_1d < change_8h and volume_1h > 500_000 and volume_8h > 5_000_000 and 6 * volume_1h > volume_8h and 16 * volume_1h > volume_1d",
        "warning",
        "bear",
    ),
    (
        "futures_pioneer_bull",
        "Pioneer Bull",
        "early bullish trend",
        "change_5m > 1 and change_15m > 1 and 3 * change_5m > change_15m and 2 * volume_5m > volume_15m",
        "info",
        "bull",
    ),
    (
        "futures_pioneer_bear",
        "Pioneer Bear",
        "early bearish trend",
        "change_5m < -1 and change_15m < -1 and 3 * change_5m < change_15m and 2 * volume_5m > volume_15m",
        "info",
        "bear",
    ),
    (
        "futures_5_big_bull",
        "5 Big Bull",
        "5-minute bullish spike",
        "change_5m > 0.6 and change_1d < 15 and change_15m > change_5m and change_1h > change_15m and volume_5m > 100_000 and volume_1h > 1_000_000 and volume_5m > volume_15m / 3 and volume_5m > volume_1h / 6 and volume_5m > volume_8h / 66",
        "info",
        "bull",
    ),
    (
        "futures_5_big_bear",
        "5 Big Bear",
        "5-minute bearish spike",
        "change_5m < -0.6 and change_1d > -15 and change_15m < change_5m and change_1h < change_15m and volume_5m > 100_000 and volume_1h > 1_000_000 and volume_5m > volume_15m / 3 and volume_5m > volume_1h / 6 and volume_5m > volume_8h / 66",
        "info",
        "bear",
    ),
    (
        "futures_15_big_bull",
        "15 Big Bull",
        "15-minute bullish spike",
        "change_15m > 1 and change_1d < 15 and change_1h > change_15m and change_8h > change_1h and volume_15m > 400_000 and volume_1h > 1_000_000 and volume_15m > volume_1h / 3 and volume_15m > volume_8h / 26",
        "info",
        "bull",
    ),
    (
        "futures_15_big_bear",
        "15 Big Bear",
        "15-minute bearish spike",
        "change_15m < -1 and change_1d > -15 and change_1h < change_15m and change_8h < change_1h and volume_15m > 400_000 and volume_1h > 1_000_000 and volume_15m > volume_1h / 3 and volume_15m > volume_8h / 26",
        "info",
        "bear",
    ),
    (
        "futures_bottom_hunter",
        "Bottom Hunter",
        "potential bottom reversal",
        "change_1h < -0.7 and change_15m < -0.6 and change_5m > 0.5 and volume_5m > volume_15m / 2 and volume_5m > volume_1h / 8",
        "info",
        "bull",
    ),
    (
        "futures_top_hunter",
        "Top Hunter",
        "potential top reversal",
        "change_1h > 0.7 and change_15m > 0.6 and change_5m < -0.5 and volume_5m > volume_15m / 2 and volume_5m > volume_1h / 8",
        "info",
        "bear",
    ),
]


def create_presets(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    for slug, name, description, expression, severity, direction in PRESETS:
        AlertRule.objects.using(schema_editor.connection.alias).update_or_create(
            slug=slug,
            defaults=dict(
                name=name,
                description=description,
                expression=expression,
                severity=severity,
                direction=direction,
                mode="bar_close",
                cooldown_seconds=300,
                enabled=True,
                owner=None,
            ),
        )


def delete_presets(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    AlertRule.objects.using(schema_editor.connection.alias).filter(
        slug__in=[row[0] for row in PRESETS]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0001_initial")]

    operations = [
        migrations.RunPython(create_presets, delete_presets, hints={"model_name": "alertrule"}),
    ]
