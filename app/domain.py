"""The domain files `notifications.yaml` and `queue.yaml`, parsed and checked.

The parsed form is immutable plain data (`Domain`) handed to everything that
needs groups, events, channels or queue policy, so no module re-reads YAML.
"""
import re
from dataclasses import dataclass, field, replace

import yaml

from .acks import policy as ack_policy
from .channels import IN_APP
from .errors import ConfigError, InvalidEvent, InvalidGroup


@dataclass(frozen=True)
class Event:
    group: str
    name: str
    channels: tuple
    locked: bool = False
    urgent: bool = False
    requires_consent: bool = False   # the group's: email/SMS only to an address with consent on record
    ack: ack_policy.AckPolicy = ack_policy.NONE   # `ack:` defaults (app/acks/policy.py)
    digest: "Digest | None" = None   # the event's or its group's; never for an urgent event
    external_content: str = "full"   # "teaser": email/SMS carry a teaser, never the title or content
    priority: str = "normal"         # its lane (LANES); a trigger may lower it, never raise it
    fallback: tuple = ()             # (channel, the channel whose failure starts it), in order
    deadlines: tuple = ()            # (watched channel, seconds, fallback channel): `<channel>_not_delivered_within`

    def fallbacks_after(self, failed):
        """The channels to try once `failed` has failed for good (a delivery that failed, or was
        reported undelivered, was not delivered within any time either)."""
        return [channel for channel, after in self.fallback if after == failed]

    def watch(self, channel):
        """(seconds, fallback channels) when a delivery on `channel` must be reported delivered within
        `seconds` (app/deliveries/deadlines.py); None when nothing waits for its report."""
        found = [(seconds, fallback) for watched, seconds, fallback in self.deadlines if watched == channel]
        return (found[0][0], tuple(fallback for _, fallback in found)) if found else None

    def with_fallback(self, channel):
        """This event as preferences judge one of its fallback channels: as if it were a default one
        (a user who switched it off, or the whole group, still gets nothing on it)."""
        if any(channel == name for name, _ in self.fallback):
            return replace(self, channels=self.channels + (channel,))
        return self


@dataclass(frozen=True)
class Digest:
    """`digest: {window: PT10M, channels: [email], max_items: 50}`: the notifications of one user
    on these channels within the window go out as one message at its end (app/deliveries/digest.py)."""
    scope: str              # what is collected together: the group's name, or group.event
    window_seconds: int
    channels: tuple
    max_items: int = 50


DURATION = re.compile(r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+)S)?)?\Z")


def _digest(path, where, raw, channels, scope):
    """A `digest:` mapping, validated; None when absent."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"window", "channels", "max_items"}:
        raise ConfigError(path, f"{where}.digest", "must be a mapping of window, channels and max_items")
    seconds = _seconds(DURATION.match(str(raw.get("window", ""))))
    if not 1 <= seconds <= 7 * 86400:
        raise ConfigError(path, f"{where}.digest.window",
                          "must be an ISO 8601 duration from PT1S to P7D, such as PT10M")
    chans = raw.get("channels")
    if not isinstance(chans, list) or not chans or IN_APP in chans or any(c not in channels for c in chans):
        raise ConfigError(path, f"{where}.digest.channels", f"must list declared channels other than {IN_APP}")
    max_items = raw.get("max_items", 50)
    if not isinstance(max_items, int) or isinstance(max_items, bool) or not 1 <= max_items <= 500:
        raise ConfigError(path, f"{where}.digest.max_items", "must be a whole number from 1 to 500")
    return Digest(scope, seconds, tuple(chans), max_items)


EXTERNAL_CONTENT = ("full", "teaser")
LANES = ("urgent", "high", "normal", "bulk")   # priority lanes, served in this order (app/queues/lanes.py)


@dataclass(frozen=True)
class Group:
    name: str
    aliases: tuple
    events: dict
    retention_days: int | None = None
    requires_consent: bool = False

    def known_event(self, name):
        """The group's event `name`, or 400 `invalid_event`."""
        event = self.events.get(name)
        if event is None:
            raise InvalidEvent(f"Unknown event {name!r} in group {self.name!r}")
        return event


@dataclass(frozen=True)
class Domain:
    channels: dict            # name -> options dict (enabled channels only)
    groups: dict              # canonical name -> Group
    aliases: dict             # every accepted name -> canonical name
    templates: dict
    queues: dict
    retry_attempts: int
    retry_backoff: tuple
    users_per_chunk: int
    max_user_ids: int
    idempotency_ttl_seconds: int
    relay_interval: float
    relay_stale_after: float
    all_channels: dict = field(default_factory=dict)   # enabled or not
    rate_limits: dict = field(default_factory=dict)    # name -> limit string (app/ratelimit/)
    teaser: dict = field(default_factory=dict)         # `teaser:` values (bank_name, inbox_url)
    lane_chunks: dict = field(default_factory=dict)    # lane -> its own batch.users_per_chunk_<lane>

    def chunk_size(self, lane):
        """Users stored per transaction in `lane`. Every store holds the one sequence lock from its
        INSERT to its publish (app/dispatch/repository.py `sequence_lock`), so a bulk fan-out's
        chunk is how long an urgent trigger can wait behind it: a lane may have smaller chunks."""
        return self.lane_chunks.get(lane or "normal", self.users_per_chunk)

    def group(self, name):
        """The canonical Group for a name or alias, or None."""
        canonical = self.aliases.get(name)
        return self.groups.get(canonical) if canonical else None

    def known_group(self, name):
        """The canonical Group for a name or alias, or 400 `invalid_group`."""
        group = self.group(name)
        if group is None:
            raise InvalidGroup(f"Unknown notification group {name!r}")
        return group


def _read(path):
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "not found")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(file)"
        raise ConfigError(path, where, f"not valid YAML: {getattr(exc, 'problem', exc)}")
    if not isinstance(data, dict):
        raise ConfigError(path, "(file)", "must be a mapping at the top level")
    return data


def _need(path, data, key, kind, where=""):
    full = f"{where}.{key}" if where else key
    if key not in data:
        raise ConfigError(path, full, "is missing")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(path, full, f"must be a {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _kind_name(kind):
    names = {dict: "mapping", list: "list", int: "whole number", str: "string", bool: "boolean"}
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def _positive(path, data, key, where, default=None):
    if key not in data and default is not None:
        return default
    value = _need(path, data, key, int, where)
    if value <= 0:
        raise ConfigError(path, f"{where}.{key}", "must be greater than zero")
    return value


def _parse_notifications(path):
    data = _read(path)
    raw_channels = _need(path, data, "channels", dict)
    all_channels = {}
    for name, options in raw_channels.items():
        options = options or {}
        if not isinstance(options, dict):
            raise ConfigError(path, f"channels.{name}", "must be a mapping")
        all_channels[str(name)] = dict(options, enabled=bool(options.get("enabled", True)))
    if IN_APP not in all_channels:
        raise ConfigError(path, f"channels.{IN_APP}", "is missing (the in-app channel is required)")
    channels = {n: o for n, o in all_channels.items() if o["enabled"]}
    groups, aliases = {}, {}
    for gname, graw in _need(path, data, "groups", dict).items():
        where = f"groups.{gname}"
        if not isinstance(graw, dict):
            raise ConfigError(path, where, "must be a mapping")
        consent = graw.get("requires_consent", False)
        if not isinstance(consent, bool):
            raise ConfigError(path, f"{where}.requires_consent", "must be true or false")
        events = {}
        group_digest = _digest(path, where, graw.get("digest"), all_channels, str(gname))
        group_external = _external_content(path, graw, where, "full")
        group_priority = _priority(path, graw, where, "normal")
        for ename, eraw in _need(path, graw, "events", dict, where).items():
            ewhere = f"{where}.events.{ename}"
            eraw = eraw or {}
            if not isinstance(eraw, dict):
                raise ConfigError(path, ewhere, "must be a mapping")
            chans = _need(path, eraw, "channels", list, ewhere)
            for chan in chans:
                if chan not in all_channels:
                    raise ConfigError(path, f"{ewhere}.channels", f"names unknown channel {chan!r}")
            if consent and eraw.get("locked"):
                # consent can always be withdrawn; a locked event could not be switched off
                raise ConfigError(path, f"{ewhere}.locked", "a group with requires_consent cannot lock an event")
            urgent = bool(eraw.get("urgent", False))
            digest = _digest(path, ewhere, eraw.get("digest"), all_channels, f"{gname}.{ename}") or group_digest
            try:
                ack = ack_policy.build(eraw["ack"], all_channels) if eraw.get("ack") is not None else ack_policy.NONE
            except ValueError as error:
                key, problem = error.args[0]
                raise ConfigError(path, f"{ewhere}.{key}", problem)
            fallback, deadlines = _fallback(path, eraw, ewhere, chans, all_channels)
            events[str(ename)] = Event(
                str(gname), str(ename), tuple(c for c in chans if c in channels), bool(eraw.get("locked", False)),
                urgent, requires_consent=consent, ack=ack,
                digest=None if urgent else digest,   # urgent never waits for a digest
                external_content=_external_content(path, eraw, ewhere, group_external),
                priority=_priority(path, eraw, ewhere, "urgent" if urgent else group_priority),
                fallback=fallback, deadlines=deadlines)
        retention = graw.get("retention_days")
        if retention is not None and (not isinstance(retention, int) or retention <= 0):
            raise ConfigError(path, f"{where}.retention_days", "must be a whole number of days > 0")
        group_aliases = graw.get("aliases", []) or []
        if not isinstance(group_aliases, list):
            raise ConfigError(path, f"{where}.aliases", "must be a list")
        groups[str(gname)] = Group(str(gname), tuple(group_aliases), events, retention, consent)
        for name in (gname, *group_aliases):
            if name in aliases:
                raise ConfigError(path, f"{where}.aliases", f"name {name!r} is used by two groups")
            aliases[str(name)] = str(gname)
    templates = data.get("templates", {}) or {}
    if not isinstance(templates, dict):
        raise ConfigError(path, "templates", "must be a mapping")
    return channels, all_channels, groups, aliases, templates, _teaser(path, data)


def _external_content(path, raw, where, default):
    """`external_content` of a group or event: what email, SMS and other external channels may carry."""
    value = raw.get("external_content", default)
    if value not in EXTERNAL_CONTENT:
        raise ConfigError(path, f"{where}.external_content", f"must be one of {', '.join(EXTERNAL_CONTENT)}, "
                          f"got {value!r}")
    return value


def _seconds(match):
    """Seconds of a DURATION match (0 for no match)."""
    return (int(match["d"] or 0) * 86400 + int(match["h"] or 0) * 3600 + int(match["m"] or 0) * 60
            + int(match["s"] or 0)) if match else 0


def reports_delivery(name, options):
    """Whether every provider of the channel reports delivery: Twilio's status callbacks, or a signed
    JSON report for a provider given a `report_secret` (app/deliveries/reports.py)."""
    providers = options.get("providers")
    entries = providers if isinstance(providers, list) and providers else [dict(options, name=name)]
    return all(isinstance(entry, dict) and (entry.get("type", entry.get("name")) in REPORTING_TYPES
                                            or bool(entry.get("report_secret"))) for entry in entries)


REPORTING_TYPES = ("twilio", "sms")   # Twilio status callbacks; any other type needs a `report_secret`
MAX_REPORT_WAIT = 86400


def _when(path, at, when, chans, all_channels):
    """(the watched channel, seconds or None) of a fallback's `when`: `<channel>_failed` or
    `{<channel>_not_delivered_within: <ISO 8601 duration>}` (a channel whose providers report delivery)."""
    if isinstance(when, dict) and len(when) == 1:
        key, value = next(iter(when.items()))
        after = key[:-len("_not_delivered_within")] if str(key).endswith("_not_delivered_within") else None
        if after not in chans or after == IN_APP:
            raise ConfigError(path, f"{at}.when", f"{key!r} must be `<channel>_not_delivered_within` for an "
                              "external channel of the event")
        if not reports_delivery(after, all_channels[after]):
            raise ConfigError(path, f"{at}.when", f"{key}: channel {after!r} has a provider that does not report "
                              "delivery (Twilio does; another provider needs a `report_secret`, docs/channels.md)")
        seconds = _seconds(DURATION.match(str(value)))
        if not 1 <= seconds <= MAX_REPORT_WAIT:
            raise ConfigError(path, f"{at}.when.{key}", "must be an ISO 8601 duration from PT1S to P1D, such as PT2M")
        return after, seconds
    after = when[:-len("_failed")] if isinstance(when, str) and when.endswith("_failed") else None
    if after not in chans or after == IN_APP:
        raise ConfigError(path, f"{at}.when", "must be `<channel>_failed` or `{<channel>_not_delivered_within: "
                          f"<duration>}}` for an external channel of the event, got {when!r}")
    return after, None


def _fallback(path, raw, where, chans, all_channels):
    """`fallback: [{channel: sms, when: email_failed}]`: a channel tried once another has failed for
    good, or (`when: {email_not_delivered_within: PT2M}`) once it was not reported delivered in time.
    Returns (fallback pairs, deadlines) as Event holds them."""
    entries = raw.get("fallback", []) or []
    if not isinstance(entries, list):
        raise ConfigError(path, f"{where}.fallback", "must be a list of {channel, when}")
    found, deadlines = [], []
    for i, entry in enumerate(entries):
        at = f"{where}.fallback[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"channel", "when"}:
            raise ConfigError(path, at, "must be a mapping of `channel` and `when`")
        channel, when = entry["channel"], entry["when"]
        if channel not in all_channels or channel == IN_APP:
            raise ConfigError(path, f"{at}.channel", f"names unknown or in-app channel {channel!r}")
        if channel in chans:
            raise ConfigError(path, f"{at}.channel", f"{channel!r} is already one of the event's channels")
        after, seconds = _when(path, at, when, chans, all_channels)
        if seconds is not None and any(w == after and s != seconds for w, s, _ in deadlines):
            raise ConfigError(path, f"{at}.when", f"{after}_not_delivered_within: one duration per watched channel")
        if channel in all_channels and all_channels[channel]["enabled"]:
            found.append((channel, after))
            if seconds is not None:
                deadlines.append((after, seconds, channel))
    return tuple(found), tuple(deadlines)


def _priority(path, raw, where, default):
    """`priority` of a group or event: its lane. `urgent: true` on an event makes it `urgent` unless
    it names a priority of its own."""
    value = raw.get("priority", default)
    if value not in LANES:
        raise ConfigError(path, f"{where}.priority", f"must be one of {', '.join(LANES)}, got {value!r}")
    return value


TEASER_KEYS = {"bank_name": "Your bank", "inbox_url": "{public_url}/inbox"}


def _teaser(path, data):
    """The `teaser:` section: values the teaser templates use (`{bank_name}`, the inbox link)."""
    raw = data.get("teaser", {}) or {}
    if not isinstance(raw, dict):
        raise ConfigError(path, "teaser", "must be a mapping")
    found = dict(TEASER_KEYS)
    for key, value in raw.items():
        if key not in TEASER_KEYS:
            raise ConfigError(path, f"teaser.{key}", f"unknown key (known: {', '.join(TEASER_KEYS)})")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(path, f"teaser.{key}", "must be a non-empty string")
        found[key] = value
    return found


# queue.yaml `rate_limits:` names and their defaults (app/ratelimit/ applies them).
RATE_LIMITS = {"trigger": "100/second", "service": "100/second", "user": "50/second",
               "stream_connect": "30/minute", "recipients": "3000000/minute"}


def _rate_limits(path, data):
    raw = data.get("rate_limits", {}) or {}
    if not isinstance(raw, dict):
        raise ConfigError(path, "rate_limits", "must be a mapping")
    from limits import parse_many
    found = dict(RATE_LIMITS)
    # optional: a lane's own request and recipients budgets, on top of `trigger` and `recipients`
    lane_budgets = {f"{kind}_{lane}" for kind in ("trigger", "recipients") for lane in LANES}
    for name, value in raw.items():
        where = f"rate_limits.{name}"
        if name not in RATE_LIMITS and name not in lane_budgets:
            raise ConfigError(path, where, f"unknown limit (known: {', '.join(RATE_LIMITS)}, "
                              f"trigger_<lane>, recipients_<lane>)")
        try:
            items = parse_many(value) if isinstance(value, str) else None
        except ValueError:
            items = None
        if not items or any(item.amount <= 0 for item in items):
            raise ConfigError(path, where, f"must be a rate such as '100/second' or '10 per minute', got {value!r}")
        found[name] = value
    return found


def _recipients_fit(path, limits, max_user_ids):
    """A trigger of `batch.max_user_ids` users must fit the recipients budget, or it could never be accepted."""
    from limits import parse
    for name in [n for n in limits if n.startswith("recipients")]:
        budget = parse(limits[name]).amount
        if budget < max_user_ids:
            raise ConfigError(path, f"rate_limits.{name}", f"allows {budget} recipients per window, fewer than "
                              f"batch.max_user_ids ({max_user_ids}): the largest trigger could never be accepted")
    return limits


def _parse_queue(path):
    data = _read(path)
    queues = _need(path, data, "queues", dict)
    for key in ("dispatch", "deliveries"):
        _need(path, queues, key, str, "queues")
    retry = _need(path, data, "retry", dict)
    attempts = _positive(path, retry, "attempts", "retry")
    backoff = _need(path, retry, "backoff", list, "retry")
    for i, delay in enumerate(backoff):
        if not isinstance(delay, (int, float)) or isinstance(delay, bool) or delay < 0:
            raise ConfigError(path, f"retry.backoff[{i}]", "must be a number of seconds >= 0")
    batch = _need(path, data, "batch", dict)
    idem = data.get("idempotency", {}) or {}
    relay = data.get("relay", {}) or {}
    return dict(
        queues=dict(queues), retry_attempts=attempts, retry_backoff=tuple(backoff),
        users_per_chunk=_positive(path, batch, "users_per_chunk", "batch"),
        lane_chunks={lane: _positive(path, batch, f"users_per_chunk_{lane}", "batch") for lane in LANES
                     if f"users_per_chunk_{lane}" in batch},
        max_user_ids=_positive(path, batch, "max_user_ids", "batch"),
        idempotency_ttl_seconds=3600 * _positive(path, idem, "ttl_hours", "idempotency", 24),
        relay_interval=float(_positive(path, relay, "interval_seconds", "relay", 2)),
        relay_stale_after=float(_positive(path, relay, "stale_after_seconds", "relay", 30)),
        rate_limits=_recipients_fit(path, _rate_limits(path, data), _positive(path, batch, "max_user_ids", "batch")),
    )


def load_domain(notifications_path, queue_path):
    """Parse and validate both domain files; raise ConfigError on the first problem."""
    channels, all_channels, groups, aliases, templates, teaser = _parse_notifications(notifications_path)
    return Domain(channels=channels, groups=groups, aliases=aliases, templates=templates,
                  all_channels=all_channels, teaser=teaser, **_parse_queue(queue_path))
