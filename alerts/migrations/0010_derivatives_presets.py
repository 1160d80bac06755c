"""The 6 futures presets of docs/contract.md §7b, frozen as they were when this migration was written, so
existing installs get them too (16 presets in all).

(slug, name, description, expression, severity, direction); global, enabled, bar_close, cooldown 300 s.
"""

from django.db import migrations

PRESETS = [
    (
        "futures_crowded_longs",
        "Crowded Longs",
        "funding rich while open interest builds into a rise",
        "funding_apr > 50 and oi_change_4h > 5 and change_4h > 0",
        "info",
        "bull",
    ),
    (
        "futures_crowded_shorts",
        "Crowded Shorts",
        "funding negative while open interest builds into a fall",
        "funding_apr < -50 and oi_change_4h > 5 and change_4h < 0",
        "info",
        "bear",
    ),
    (
        "futures_long_squeeze",
        "Long Squeeze",
        "longs liquidated into a drop",
        "liq_long_5m > 1_000_000 and change_5m < -1",
        "warning",
        "bear",
    ),
    (
        "futures_short_squeeze",
        "Short Squeeze",
        "shorts liquidated into a rise",
        "liq_short_5m > 1_000_000 and change_5m > 1",
        "warning",
        "bull",
    ),
    (
        "futures_oi_surge",
        "OI Surge",
        "positions pile in while price stands still",
        "oi_change_15m > 5 and abs(change_15m) < 1",
        "info",
        "neutral",
    ),
    (
        "futures_basis_dislocation",
        "Basis Dislocation",
        "mark far from index",
        "abs(basis) > 0.5",
        "info",
        "neutral",
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
    dependencies = [("alerts", "0009_dead_letters_handled")]

    operations = [
        migrations.RunPython(create_presets, delete_presets, hints={"model_name": "alertrule"}),
    ]
