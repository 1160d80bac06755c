from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "notifications"

    def ready(self) -> None:
        # alerts announces committed outbox rows; it does not know who delivers them.
        from alerts.signals import outbox_committed
        from notifications.services import dispatch_committed_outbox

        outbox_committed.connect(dispatch_committed_outbox, dispatch_uid="notifications.dispatch_outbox")
