"""The `Candle` model is now `StoredCandle` (beside the contract's `Candle` message). Its table stays
`candles_1m`: no table and no row changes, only Django's name for the model."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("metrics", "0002_timescaledb")]

    operations = [migrations.RenameModel(old_name="Candle", new_name="StoredCandle")]
