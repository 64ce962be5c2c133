"""Who may open a stream: bearer token or one-time ticket, and the per-user limit.

Browsers cannot set headers on EventSource, so a page trades its bearer token
for a ticket (random, single use, ~60 s) and puts it in the stream URL; the
ticket is consumed atomically (GETDEL), so a leaked URL is useless once used.
Redis is shared infrastructure, not trusted to say who a ticket is for: it
holds the ticket's id and its payload (user, customers, the token's `exp`),
and the string handed to the client is `<id>.<HMAC of id and payload>` under
SECRET_KEY (app/security/keyed.py). An entry written or altered in Redis has no valid
signature, and Redis never holds the signature, so reading it opens nothing.
The per-user limit counts streams in Redis across every worker and server;
each entry expires unless its stream refreshes it, so a crashed process
cannot hold a user's slots for long.
"""
import json
import secrets
import time
import uuid
from dataclasses import dataclass

from ..security import keyed
from ..security.auth import User
from ..errors import InvalidTicket, TooManyConnections
from ..bus import key

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


TICKET_PURPOSE = "stream-ticket"
MAX_TICKET_LENGTH = 200


@dataclass(frozen=True)
class Ticket:
    """A verified ticket's payload: whose stream it opens, and until when."""
    user: User
    expires_at: float   # the `exp` of the token the ticket was issued from


def issue_ticket(redis, user, ttl, expires_at):
    """A new single-use ticket for `user`, valid `ttl` seconds; its stream ends at `expires_at`."""
    ticket_id = secrets.token_urlsafe(18)
    payload = json.dumps({"sub": str(user.id), "exp": expires_at,
                          "customers": None if user.customers is None else [str(c) for c in user.customers]})
    redis.set(key("ticket", ticket_id), payload, ex=ttl)
    return f"{ticket_id}.{keyed.sign(TICKET_PURPOSE, _signed_text(ticket_id, payload))}"


def redeem_ticket(redis, ticket):
    """The ticket's payload; it cannot be used again (consumed even when its signature is wrong)."""
    ticket_id, signature = _split(ticket)
    raw = redis.getdel(key("ticket", ticket_id)) if ticket_id else None
    return _verified(ticket_id, raw, signature)


def peek_ticket(redis, ticket):
    """The ticket's payload without using it up (a HEAD, the rate limit's caller)."""
    ticket_id, signature = _split(ticket)
    raw = redis.get(key("ticket", ticket_id)) if ticket_id else None
    return _verified(ticket_id, raw, signature)


def _split(ticket):
    if not ticket or len(ticket) > MAX_TICKET_LENGTH or ticket.count(".") != 1:
        return None, None
    return tuple(ticket.split("."))


def _signed_text(ticket_id, payload):
    return f"{ticket_id}\x00{payload.decode() if isinstance(payload, bytes) else payload}"


def _verified(ticket_id, raw, signature):
    if raw is None or not keyed.verify(TICKET_PURPOSE, _signed_text(ticket_id, raw), signature):
        raise InvalidTicket()
    payload = json.loads(raw)
    customers = payload["customers"]
    user = User(uuid.UUID(payload["sub"]), None if customers is None else tuple(uuid.UUID(c) for c in customers))
    return Ticket(user, float(payload["exp"]))


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

    def check_room(self, user_id):
        """429 now if the user holds every stream they may (nothing taken): for the ticket endpoint."""
        if self.redis.zcount(self._key(user_id), time.time(), "+inf") >= self.limit:
            raise TooManyConnections(f"At most {self.limit} open streams per user; close one first")

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
