"""The one definition of the stream channels: their names, and what goes over them (encoded by
publishers, checked by the hub).

Channels: one per user, `<REDIS_PREFIX>user2:<user_id>` (`user_channel`). A
process's hub subscribes to the channels of the users it holds streams for,
so a message reaches only the processes that need it, whatever the number of
processes. The `2` is the message format's version: a format change gets a new
channel name, so during a rolling deploy a hub of the other release never reads
(and frames) messages it cannot parse; a stream catches up by cursor instead
(docs/releases.md).

Redis is shared infrastructure: whoever can write to it can PUBLISH on a
user's channel. The hub turns what it reads into SSE frames, so a message it
did not check could add lines to a stream (a fake bank message, or an `id:`
that moves the client's cursor past every real notification). Every message
therefore carries a MAC under SECRET_KEY, and the hub frames only messages
whose MAC, kind, cursor, customer, event name and body it has checked; any
other is dropped and counted (`notif_hub_dropped_messages_total{reason}`).

    <mac>|n|<seq>|<customer>|<JSON>        stored notification; `seq` is its cursor
    <mac>|d||<customer>|<JSON>             direct push (no cursor, never replayed)
    <mac>|e|<name>|<audience>|<JSON>       named state event (`unread`, `read`, `deleted`)

`customer` is a canonical UUID or empty (a notification of no customer). An
event's `audience` is `*` (every stream of the user: `unread`, which the hub
re-counts for customer-scoped streams) or the customer whose notifications it
is about (empty: of no customer), so a customer-scoped stream hears only about
what it could list. `mac` is 32 hex digits: HMAC-SHA256, cut to 128 bits, of
`<channel>\\0<the rest>`; a direct push, published once for all its users,
is signed for the channel `*` (it carries no cursor and names no user).
"""
import hashlib
import hmac
import re
from typing import NamedTuple

import orjson

from ..security.keyed import sign

MAX_MESSAGE = 256 * 1024    # bytes; a stored notification at every field's limit is under 50 KiB
ANY_CHANNEL = b"*"
EVERYONE = "*"              # an event's audience: every stream of the user
EVENTS = {"unread": True, "read": False, "deleted": False, "ack": False}   # name -> for every stream (else by customer)
_MAC_LENGTH = 32
_SEQ = re.compile(rb"[1-9][0-9]{0,17}\Z")   # a bigserial cursor, positive, below 10**18
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_HEX = re.compile(rb"[0-9a-f]{32}\Z")
REASONS = ("size", "format", "signature", "kind", "cursor", "customer", "event", "body")


class Dropped(ValueError):
    """A message the hub does not frame; `reason` is one of REASONS (the metric's label)."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class Message(NamedTuple):
    kind: str          # "n", "d" or "e"
    seq: int | None    # the cursor of a stored notification
    name: str | None   # an event's name
    customer: str | None   # "" (no customer) or a UUID; None: an event for every stream
    body: bytes        # compact JSON without CR or LF


CHANNEL_KIND = "user2"   # "user": the unsigned format of the releases before signed messages


def user_channel(prefix, user_id):
    """The channel a user's streams listen on, under the deployment's REDIS_PREFIX."""
    return f"{prefix}{CHANNEL_KIND}:{user_id}"


def message_key(secret):
    """The MAC key of channel messages, derived from SECRET_KEY for this purpose alone."""
    return bytes.fromhex(sign("pubsub-messages", b"", secret=secret))


def _mac(key, channel, rest):
    return hmac.digest(key, channel + b"\x00" + rest, hashlib.sha256)[:_MAC_LENGTH // 2].hex().encode()


# -- encoding (publishers) -------------------------------------------------------------------


def notification_message(seq, customer_id, public_json):
    return f"n|{int(seq)}|{customer_id or ''}|{public_json}"


def direct_message(customer_id, public_json):
    return f"d||{customer_id or ''}|{public_json}"


def event_message(name, payload, customer_id=EVERYONE):
    """`customer_id`: EVERYONE for `unread`, else the customer (None: none) its ids belong to."""
    if EVENTS[name] != (customer_id == EVERYONE):
        raise ValueError(f"event {name!r} with audience {customer_id!r}")
    audience = EVERYONE if customer_id == EVERYONE else (customer_id or "")
    return f"e|{name}|{audience}|{orjson.dumps(payload).decode()}"


def seal(key, channel, message):
    """`message` (from the functions above) ready to PUBLISH on `channel`."""
    rest = message.encode()
    scope = ANY_CHANNEL if rest.startswith(b"d|") else channel.encode()
    return (_mac(key, scope, rest) + b"|" + rest).decode()


# -- decoding (the hub) ----------------------------------------------------------------------


def decode(key, channel, raw):
    """The Message in `raw` (bytes read on `channel`, bytes), or raise Dropped."""
    if not isinstance(raw, bytes) or len(raw) > MAX_MESSAGE:
        raise Dropped("size")
    mac, rest = raw[:_MAC_LENGTH], raw[_MAC_LENGTH + 1:]
    if raw[_MAC_LENGTH:_MAC_LENGTH + 1] != b"|" or not _HEX.match(mac):
        raise Dropped("format")
    scope = ANY_CHANNEL if rest.startswith(b"d|") else channel
    if not hmac.compare_digest(_mac(key, scope, rest), mac):
        raise Dropped("signature")
    parts = rest.split(b"|", 3)
    if len(parts) != 4:
        raise Dropped("format")
    kind, first, customer, body = parts
    if kind == b"n":
        if not _SEQ.match(first):
            raise Dropped("cursor")
        message = Message("n", int(first), None, _customer(customer), body)
    elif kind == b"d":
        if first:
            raise Dropped("cursor")
        message = Message("d", None, None, _customer(customer), body)
    elif kind == b"e":
        name = first.decode("ascii", "replace")
        if name not in EVENTS:
            raise Dropped("event")
        if EVENTS[name] != (customer == b"*"):
            raise Dropped("customer")
        message = Message("e", None, name, None if EVENTS[name] else _customer(customer), body)
    else:
        raise Dropped("kind")
    _check_body(body)
    return message


def _customer(raw):
    if raw and not _UUID.match(raw):
        raise Dropped("customer")
    return raw.decode()


def _check_body(body):
    """One line of JSON, an object: nothing that could end the `data:` line or the frame."""
    if b"\r" in body or b"\n" in body:
        raise Dropped("body")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Dropped("body")
    if not isinstance(value, dict):
        raise Dropped("body")
