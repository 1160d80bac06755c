"""Bring existing rules into the docs/contract.md §8 limits before the schema enforces them (0007): every
description cut to 500 characters and name to 120, every personal rule's cooldown raised to 60 s."""

from django.db import migrations
from django.db.models import Q
from django.db.models.functions import Left, Length

DESCRIPTION_MAX = 500  # frozen here: a migration must not follow later changes of alerts.models
NAME_MAX = 120
PERSONAL_MIN_COOLDOWN_SECONDS = 60


def into_range(apps, schema_editor):
    rules = apps.get_model("alerts", "AlertRule").objects.using(schema_editor.connection.alias)
    rules.annotate(n=Length("description")).filter(n__gt=DESCRIPTION_MAX).update(
        description=Left("description", DESCRIPTION_MAX)
    )
    rules.annotate(n=Length("name")).filter(n__gt=NAME_MAX).update(name=Left("name", NAME_MAX))
    rules.filter(Q(owner__isnull=False) & Q(cooldown_seconds__lt=PERSONAL_MIN_COOLDOWN_SECONDS)).update(
        cooldown_seconds=PERSONAL_MIN_COOLDOWN_SECONDS
    )


class Migration(migrations.Migration):
    dependencies = [("alerts", "0005_remove_usersettings_channels")]

    operations = [
        migrations.RunPython(into_range, migrations.RunPython.noop, hints={"model_name": "alertrule"})
    ]
