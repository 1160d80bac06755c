from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "notifications"

    def ready(self) -> None:
        # alerts announces committed outbox rows; it does not know who delivers them.
        from alerts.signals import dead_lettered, dead_letters_handled, outbox_committed
        from notifications.operator import on_dead_letter, on_dead_letters_handled
        from notifications.services import dispatch_committed_outbox

        outbox_committed.connect(dispatch_committed_outbox, dispatch_uid="notifications.dispatch_outbox")
        # and what run_alerts gave up on, which the operator must hear about.
        dead_lettered.connect(on_dead_letter, dispatch_uid="notifications.dead_letter")
        dead_letters_handled.connect(
            on_dead_letters_handled, dispatch_uid="notifications.dead_letters_handled"
        )
