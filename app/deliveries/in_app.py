"""The in-app delivery, which is the notification row itself.

Storing and publishing a notification is its `system` delivery, so that
delivery is `sent` exactly when the notification is `in_app` (the dispatch
plan hides a notification from the inbox precisely when its in-app channel is
not sent). Writing a `deliveries` row to say so again cost a quarter of the
fan-out's time; the readers below derive it instead. A `skipped` in-app
delivery (the user switched the channel off) still has its row, with the reason.
"""
from ..channels import IN_APP

# A `sent` in-app row that the previous release still writes while a deploy runs (0012 removed the
# older ones): the notification row already says it, so stats skip it rather than count it twice.
WRITTEN_SENT_ROW = f"(d.channel = '{IN_APP}' AND d.status = 'sent')"

# For stats: the in-app deliveries of the notifications in a window, shaped like `deliveries` rows.
SENT_ROWS = f"SELECT '{IN_APP}'::text AS channel, 'sent'::text AS status, n.created_at AS sent_at, n.created_at" \
            " FROM notifications n WHERE n.in_app AND {window}"


def delivered(created_at):
    """The in-app delivery of a visible notification, as GET …/deliveries shows a delivery."""
    return {"id": None, "channel": IN_APP, "status": "sent", "reason": None, "attempts": 0, "last_error": None,
            "provider_message_id": None, "created_at": created_at, "updated_at": created_at, "sent_at": created_at,
            "delivered_at": None, "history": []}
