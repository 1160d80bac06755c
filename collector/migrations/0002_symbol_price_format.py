from django.db import migrations, models


class Migration(migrations.Migration):
    """How each symbol's prices are written (exchangeInfo PRICE_FILTER tickSize, pricePrecision): nullable adds."""

    dependencies = [("collector", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="symbol",
            name="tick_size",
            field=models.CharField(
                blank=True,
                default="",
                help_text="PRICE_FILTER tickSize as exchangeInfo spells it",
                max_length=40,
            ),
        ),
        migrations.AddField(
            model_name="symbol",
            name="price_precision",
            field=models.PositiveSmallIntegerField(blank=True, null=True),
        ),
    ]
