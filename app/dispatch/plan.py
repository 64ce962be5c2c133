"""Which channels each user's notification goes out on, decided per chunk from preferences.

The in-app channel (`system`) is delivered by storing and publishing, so its
delivery row is `sent` at once; when a user switched it off the notification
is stored for history but kept out of the inbox and stream. Every other
enabled channel gets a `pending` row and a job; a default channel switched
off gets a `skipped` row saying why.
"""
from dataclasses import dataclass, field

from ..preferences.repository import choices_for_users
from ..preferences.rules import resolve

IN_APP = "system"
OFF = "switched off in the user's preferences"


@dataclass
class Plan:
    decisions: dict = field(default_factory=dict)   # user id (str) -> [(channel, status, reason)]

    def hidden_users(self):
        """Users whose notification stays out of the inbox and stream."""
        return [uid for uid, decisions in self.decisions.items()
                if not any(c == IN_APP and status == "sent" for c, status, _ in decisions)]

    def delivery_rows(self, rows):
        return [(row["id"], row["user_id"], channel, status, reason)
                for row in rows for channel, status, reason in self.decisions[str(row["user_id"])]]


def plan_channels(conn, domain, event, requested, user_ids, customer_id):
    """Decide every channel for every user of the chunk (one query for all of them)."""
    candidates = [c for c in domain.channels if requested is None or c in requested]
    choices = choices_for_users(conn, user_ids, event.group, customer_id)
    plan = Plan()
    for uid in user_ids:
        mine = choices.get(_uuid(uid), [])
        decisions = []
        for channel in candidates:
            if resolve(event, channel, mine, customer_id)[0]:
                decisions.append((channel, "sent" if channel == IN_APP else "pending", None))
            elif channel in event.channels:
                decisions.append((channel, "skipped", OFF))
        plan.decisions[str(uid)] = decisions
    return plan


def _uuid(value):
    import uuid
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
