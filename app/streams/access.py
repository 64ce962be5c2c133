"""Who may open a stream: bearer token or one-time ticket, and the per-user limit.

Browsers cannot set headers on EventSource, so a page trades its bearer token
for a ticket (random, single use, ~60 s) and puts it in the stream URL; the
ticket is consumed atomically (GETDEL), so a leaked URL is useless once used.
The per-user limit counts streams in Redis across every worker and server;
each entry expires unless its stream refreshes it, so a crashed process
cannot hold a user's slots for long.
"""
import json
import secrets
import time
import uuid

from ..auth import User
from ..errors import InvalidTicket, TooManyConnections
from ..redis_client import key

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
SLOT_TTL = 180        # seconds an entry lives without a refresh
SLOT_REFRESH = 60     # how often an open stream refreshes it
STREAM_PATH = "/v1/notifications/sse"


def issue_ticket(redis, user, ttl):
    ticket = secrets.token_urlsafe(32)
    payload = {"sub": str(user.id), "customers": None if user.customers is None else [str(c) for c in user.customers]}
    redis.set(key("ticket", ticket), json.dumps(payload), ex=ttl)
    return ticket


def redeem_ticket(redis, ticket):
    """The user a ticket was issued to; it cannot be used again."""
    raw = redis.getdel(key("ticket", ticket)) if ticket and len(ticket) < 100 else None
    if raw is None:
        raise InvalidTicket()
    payload = json.loads(raw)
    customers = payload["customers"]
    return User(uuid.UUID(payload["sub"]), None if customers is None else tuple(uuid.UUID(c) for c in customers))


class Slots:
    """The per-user stream limit, shared through Redis."""

    def __init__(self, redis, limit, prefix):
        self.redis, self.limit, self.prefix = redis, limit, prefix
        self.script = redis.register_script(_ACQUIRE)

    def _key(self, user_id):
        return f"{self.prefix}streams:{user_id}"

    def acquire(self, user_id, customers=None):
        """Take a slot or raise 429; returns the slot id to release. The id carries the stream's
        customer scope (None: every customer), so `open_streams` can tell who would hear what."""
        slot = uuid.uuid4().hex if customers is None else uuid.uuid4().hex + "|" + ",".join(sorted(customers))
        now = time.time()
        if not self.script(keys=[self._key(user_id)], args=[now, now + SLOT_TTL, self.limit, slot, SLOT_TTL]):
            raise TooManyConnections(f"At most {self.limit} open streams per user; close one first")
        return slot

    def refresh_many(self, pairs, batch=1000):
        """Push back the expiry of every (user id, slot) given: one pipeline per batch."""
        expires = time.time() + SLOT_TTL
        for start in range(0, len(pairs), batch):
            with self.redis.pipeline(transaction=False) as pipe:
                for user_id, slot in pairs[start:start + batch]:
                    pipe.zadd(self._key(user_id), {slot: expires}, xx=True)
                    pipe.expire(self._key(user_id), SLOT_TTL)
                pipe.execute()

    def open_streams(self, user_ids, customer, batch=1000):
        """How many open streams of these users accept a message of `customer` ('' for none), as a
        stream's `wants` decides: one pipeline per batch of users."""
        now, count = time.time(), 0
        for start in range(0, len(user_ids), batch):
            with self.redis.pipeline(transaction=False) as pipe:
                for user_id in user_ids[start:start + batch]:
                    pipe.zrangebyscore(self._key(user_id), now, "+inf")
                for members in pipe.execute():
                    count += sum(1 for member in members if _admits(member, customer))
        return count

    def release_many(self, pairs, batch=1000):
        for start in range(0, len(pairs), batch):
            with self.redis.pipeline(transaction=False) as pipe:
                for user_id, slot in pairs[start:start + batch]:
                    pipe.zrem(self._key(user_id), slot)
                pipe.execute()


def _admits(member, customer):
    member = member.decode() if isinstance(member, bytes) else member
    _, scoped, scope = member.partition("|")
    return not scoped or customer in scope.split(",")


def slots(app):
    """The process's Slots, built once: every stream shares it (and its script object)."""
    instance = app.extensions.get("stream_slots")
    if instance is None:
        instance = Slots(app.extensions["redis"], app.config["SSE_MAX_STREAMS_PER_USER"], app.config["REDIS_PREFIX"])
        app.extensions["stream_slots"] = instance
    return instance
