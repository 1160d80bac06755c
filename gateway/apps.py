from django.apps import AppConfig


class GatewayConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "gateway"

    def ready(self) -> None:
        # alerts announces settings changes; the gateway owns the sockets that must follow them.
        from django.conf import settings
        from django.contrib.auth.signals import user_logged_out
        from django.db.models.signals import post_delete, post_save

        from alerts.signals import user_settings_changed
        from gateway import consumers

        user_settings_changed.connect(
            consumers.on_user_settings_changed, dispatch_uid="gateway.settings_changed"
        )
        # Open sockets end with the session: sign-out, deactivation, deletion (close 4403).
        user_logged_out.connect(consumers.on_user_logged_out, dispatch_uid="gateway.logged_out")
        post_save.connect(
            consumers.on_user_saved, sender=settings.AUTH_USER_MODEL, dispatch_uid="gateway.user_saved"
        )
        post_delete.connect(
            consumers.on_user_deleted, sender=settings.AUTH_USER_MODEL, dispatch_uid="gateway.user_deleted"
        )
