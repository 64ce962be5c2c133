"""Resolution: the most specific choice wins.

Specificity, from least to most: the event's default channels in
notifications.yaml; a choice for all customers; a choice for one customer.
Within one of those levels an event beats its group and a single channel
beats every channel. Locked events ignore choices that would switch a default
channel off.

Worked example: `chat.message_received` defaults to system + email. The user
switches the whole `chat` group off for all customers, then switches email
back on for `message_received` for customer C. For customer C: system off
(user, group), email on (customer). For any other customer: both off (user).
"""
import uuid

ALL_CUSTOMERS = uuid.UUID(int=0)


def _rank(choice, customer_id):
    """Sort key of a choice that applies, or None when it does not apply."""
    customer, event, channel = choice["customer_id"], choice["event"], choice["channel"]
    if customer != ALL_CUSTOMERS and customer != customer_id:
        return None
    return (customer != ALL_CUSTOMERS, event != "", channel != "")


def resolve(event, channel, choices, customer_id):
    """(enabled, locked, source) for one channel of one event.

    choices: the user's rows for the event's group (dicts with customer_id,
    event, channel, enabled); rows of other events or channels are ignored.
    """
    default = channel in event.channels
    if event.locked and default:
        return True, True, "default"
    best, best_rank = None, None
    for choice in choices:
        if choice["event"] not in ("", event.name) or choice["channel"] not in ("", channel):
            continue
        rank = _rank(choice, customer_id)
        if rank is not None and (best_rank is None or rank > best_rank):
            best, best_rank = choice, rank
    if best is None:
        return default, False, "default"
    return best["enabled"], False, "customer" if best_rank[0] else "user"


def enabled_channels(event, channels, choices, customer_id):
    """The channels, among `channels`, a notification of this event goes out on."""
    return [c for c in channels if resolve(event, c, choices, customer_id)[0]]
