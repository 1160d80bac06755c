"""Notifications (issue 9): alerts to Telegram, Discord, Slack, webhooks and email through Celery.

Modules: `models` (channels on `default`, deliveries on `timeseries`), `crypto` (secrets at rest),
`safety` (outgoing address guard and pinned HTTP), one module per transport, `routing` (who gets
what), `grouping` (one message for many alerts), `services` (fan-out, delivery, retries, send test),
`operator` (operator alerts). See docs/notifications.md.
"""
