"""Which channels each stored notification goes out on, decided per chunk.

The in-app channel (`system`) is delivered by storing and publishing, so its
delivery row is `sent` at once; every other channel gets a `pending` row and
a job.
"""
from dataclasses import dataclass, field

IN_APP = "system"


@dataclass
class Plan:
    decisions: dict = field(default_factory=dict)   # notification id -> [(channel, status, reason)]
    users: dict = field(default_factory=dict)       # notification id -> user id

    def delivery_rows(self):
        return [(nid, self.users[nid], channel, status, reason)
                for nid, decisions in self.decisions.items() for channel, status, reason in decisions]

    def in_app(self, row):
        """Whether the notification shows in the inbox and stream."""
        return any(channel == IN_APP and status == "sent" for channel, status, _ in self.decisions[row["id"]])


def plan_channels(conn, event, channels, rows):
    """Decide every channel of every row of the chunk."""
    plan = Plan()
    for row in rows:
        plan.users[row["id"]] = row["user_id"]
        plan.decisions[row["id"]] = [(c, "sent" if c == IN_APP else "pending", None) for c in channels]
    return plan
