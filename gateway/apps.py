from django.apps import AppConfig


class GatewayConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "gateway"

    def ready(self) -> None:
        # alerts announces settings changes; the gateway owns the sockets that must follow them.
        from alerts.signals import user_settings_changed
        from gateway.consumers import on_user_settings_changed

        user_settings_changed.connect(on_user_settings_changed, dispatch_uid="gateway.settings_changed")
