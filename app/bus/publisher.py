"""Publishing to the stream channels: the producers' side (jobs, direct push, state events).

The channels' names and what a message holds (and how the hub checks it) are
defined once, in app/bus/codec.py. Every message is sealed (MAC under
SECRET_KEY) as it is published.
"""
from .codec import message_key, seal, user_channel

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


class Publisher:
    """Publishes (channel, message) pairs in batches with one script call each; on a Redis
    Cluster (`cluster`), with one pipeline of SPUBLISH each, which redis-py splits by master
    (a script may not touch channels of several slots)."""

    def __init__(self, client, prefix, key, cluster=False):
        self.client, self.prefix, self.key, self.cluster = client, prefix, key, cluster
        if cluster:
            self._script = self._same = None
        else:
            self._script = client.register_script(_PUBLISH_MANY)
            self._same = client.register_script(_PUBLISH_SAME)

    def _sharded(self, channels, messages):
        pipe = self.client.pipeline(transaction=False)
        for channel, message in zip(channels, messages):
            pipe.spublish(channel, message)
        return pipe.execute()

    def publish(self, pairs, heard=None):
        """pairs: iterable of (user_id, message); returns how many were sent. A `heard` list
        receives the user ids whose channel had a subscriber (a stream open somewhere)."""
        pairs = list(pairs)
        for start in range(0, len(pairs), BATCH):
            chunk = pairs[start:start + BATCH]
            channels = [user_channel(self.prefix, uid) for uid, _ in chunk]
            sealed = [seal(self.key, channel, message) for channel, (_, message) in zip(channels, chunk)]
            counts = self._sharded(channels, sealed) if self.cluster else self._script(keys=channels, args=sealed)
            if heard is not None:
                heard.extend(uid for (uid, _), count in zip(chunk, counts) if count)
        return len(pairs)

    def publish_same(self, user_ids, message):
        """The same direct push to every user's channel, sealed once; returns how many channels."""
        if not message.startswith("d|"):
            raise ValueError("only a direct push is published alike on several channels")
        sealed = seal(self.key, "*", message)
        user_ids = list(user_ids)
        for start in range(0, len(user_ids), BATCH):
            channels = [user_channel(self.prefix, uid) for uid in user_ids[start:start + BATCH]]
            if self.cluster:
                self._sharded(channels, [sealed] * len(channels))
            else:
                self._same(keys=channels, args=[sealed])
        return len(user_ids)


def publisher(app):
    """The app's publisher, built once per process."""
    if "publisher" not in app.extensions:
        from . import pubsub_client
        client, cluster = pubsub_client(app)
        app.extensions["publisher"] = Publisher(client, app.config["REDIS_PREFIX"], message_key(app.config["SECRET_KEY"]),
                                                cluster)
    return app.extensions["publisher"]
