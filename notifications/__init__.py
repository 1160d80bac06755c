"""Notifications: alerts to Telegram, Discord, Slack, webhooks and email through Celery.

Modules: `models` (channels on `default`, deliveries on `timeseries`), `crypto` (secrets at rest),
`safety` (outgoing address guard and pinned HTTP), one module per transport and `transports` (by kind),
`routing` (which channel takes which alert), `grouping` (one message for many alerts), `services`
(fan-out, delivery, retries, send test), `operator` (operator alerts), `watchdog` (what raises them),
`queue` (enqueueing tasks by name) and `tasks`. Imports run one way: tasks → watchdog → operator →
services → the rest, and the app imports `alerts`, never the reverse. See docs/notifications.md.
"""
