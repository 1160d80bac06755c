"""What alerts announces to the apps built on it, so that alerts never imports them.

Each is sent after the writing transaction commits; a receiver's error propagates to the sender's
`on_commit` callback, which logs it (the stored rows are the truth either way).
"""

from __future__ import annotations

from django.dispatch import Signal

# Outbox rows were committed: `outbox_ids` (list[int]). Notifications queue their fan-out.
outbox_committed = Signal()

# A user's settings changed: `user_id` (int). The gateway tells that user's open sockets.
user_settings_changed = Signal()

# run_alerts stored a dead letter: `dead_letter_id` (int), `summary` (str). Notifications raise an operator
# alert.
dead_lettered = Signal()

# An operator marked dead letters handled: `dead_letter_ids` (list[int]). Notifications resolve their operator
# alerts.
dead_letters_handled = Signal()
