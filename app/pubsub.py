"""The Redis pub/sub layout shared by publishers (jobs, direct push) and the stream hub.

Channels: one per user, `<REDIS_PREFIX>user:<user_id>`. A process's hub
subscribes to the channels of the users it holds streams for, so a message
reaches only the processes that need it, whatever the number of processes.

Messages are one line of header and the JSON, so the hub routes them without
parsing JSON and frames each event once for all its streams:

    n|<seq>|<customer_id or empty>|<notification JSON>     stored notification
    d||<customer_id or empty>|<notification JSON>          direct push (no cursor)
    e|<event name>||<JSON>                                 named state event (unread counts, read sync)
"""
import orjson

# One round trip publishes a whole batch, inside Redis; the answer is each channel's subscriber count.
_PUBLISH_MANY = """
local heard = {}
for i = 1, #KEYS do
  heard[i] = redis.call('PUBLISH', KEYS[i], ARGV[i])
end
return heard
"""
# One message to many channels (a direct push): the message crosses to Redis once, not per user.
_PUBLISH_SAME = """
for i = 1, #KEYS do
  redis.call('PUBLISH', KEYS[i], ARGV[1])
end
return #KEYS
"""
BATCH = 1000


def user_channel(prefix, user_id):
    return f"{prefix}user:{user_id}"


def notification_message(seq, customer_id, public_json):
    return f"n|{seq}|{customer_id or ''}|{public_json}"


def direct_message(customer_id, public_json):
    return f"d||{customer_id or ''}|{public_json}"


def event_message(name, payload):
    return f"e|{name}||{orjson.dumps(payload).decode()}"


def parse(message):
    """(kind, seq or name, customer_id or '', json text) from a published message."""
    kind, first, customer, body = message.split("|", 3)
    return kind, first, customer, body


class Publisher:
    """Publishes (channel, message) pairs in batches with one script call each."""

    def __init__(self, client, prefix):
        self.client, self.prefix = client, prefix
        self._script = client.register_script(_PUBLISH_MANY)
        self._same = client.register_script(_PUBLISH_SAME)

    def publish(self, pairs, heard=None):
        """pairs: iterable of (user_id, message); returns how many were sent. A `heard` list
        receives the user ids whose channel had a subscriber (a stream open somewhere)."""
        pairs = list(pairs)
        for start in range(0, len(pairs), BATCH):
            chunk = pairs[start:start + BATCH]
            counts = self._script(keys=[user_channel(self.prefix, uid) for uid, _ in chunk],
                                  args=[message for _, message in chunk])
            if heard is not None:
                heard.extend(uid for (uid, _), count in zip(chunk, counts) if count)
        return len(pairs)


    def publish_same(self, user_ids, message):
        """The same message to every user's channel; returns how many channels."""
        user_ids = list(user_ids)
        for start in range(0, len(user_ids), BATCH):
            self._same(keys=[user_channel(self.prefix, uid) for uid in user_ids[start:start + BATCH]], args=[message])
        return len(user_ids)


def publisher(app):
    """The app's publisher, built once per process."""
    if "publisher" not in app.extensions:
        app.extensions["publisher"] = Publisher(app.extensions["redis"], app.config["REDIS_PREFIX"])
    return app.extensions["publisher"]
