"""Server-Sent Events framing. Each event is encoded once, then shared by every stream."""

KEEPALIVE = b": keep-alive\n\n"
EXPIRED = b": credentials expired; reconnect with a fresh token or ticket and Last-Event-ID\n\n"


def opening(retry_ms):
    """The first bytes, sent at once: a comment (flushes proxies) and the reconnect hint."""
    return b": connected\nretry: %d\n\n" % retry_ms


def notification(seq, body):
    """A stored notification: an `id:` cursor and no `event:` line, for `onmessage`."""
    return b"id: %d\ndata: %s\n\n" % (seq, body.encode() if isinstance(body, str) else body)


def direct(body):
    """A direct push: no cursor, never replayed."""
    return b"data: %s\n\n" % (body.encode() if isinstance(body, str) else body)


def named(name, body, seq=None):
    """A named event (`unread`, `read`, `reset`): `onmessage` does not see it."""
    cursor = b"id: %d\n" % seq if seq is not None else b""
    return b"%sevent: %s\ndata: %s\n\n" % (cursor, name.encode(), body.encode() if isinstance(body, str) else body)
