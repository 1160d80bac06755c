"""NotificationChannel and Delivery now belong to the notifications app (notifications/migrations/0001):
they leave the alerts app's state; their tables and rows stay as they are."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("alerts", "0003_delivery_notificationchannel"),
        ("notifications", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.DeleteModel(name="Delivery"),
                migrations.DeleteModel(name="NotificationChannel"),
            ],
        ),
    ]
