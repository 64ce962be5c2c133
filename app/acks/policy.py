"""What an acknowledgement asks for: required or not, a deadline, escalation steps.

One shape for an event's default (`ack:` in notifications.yaml) and a
trigger's override (its `ack` field): ISO 8601 durations counted from the
notification's creation, e.g.

    ack: {required: true, deadline: PT24H,
          escalate: [{after: PT1H, channels: [email]}, {after: PT12H, channels: [sms]}]}

The trigger's `ack`, when given, replaces the event's as a whole. What is
stored with the trigger is the resolved policy in seconds (`stored`), so the
drain never reads YAML or parses durations.
"""
import re
from dataclasses import dataclass

_DURATION = re.compile(r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?\Z")
MAX_SECONDS = 366 * 86400


def parse_duration(text):
    """Seconds of an ISO 8601 duration of weeks, days, hours, minutes and seconds (`PT24H`, `P1D`,
    `PT1H30M`); ValueError for anything else (years and months have no fixed length)."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match or text in ("P", "PT") or text.endswith("T"):
        raise ValueError("must be an ISO 8601 duration such as PT1H, PT30M or P1D")
    weeks, days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = (((weeks * 7 + days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if not 0 < total <= MAX_SECONDS:
        raise ValueError("must be longer than zero and at most 366 days")
    return total


@dataclass(frozen=True)
class AckPolicy:
    required: bool
    deadline: int | None        # seconds after creation
    escalate: tuple             # ((after seconds, (channel, ...)), ...), in order of `after`

    def stored(self):
        """The JSON kept in the trigger's body (`ack`)."""
        return {"required": self.required, "deadline_seconds": self.deadline,
                "escalate": [{"after_seconds": after, "channels": list(channels)} for after, channels in self.escalate]}


def build(raw, known_channels):
    """An AckPolicy from its mapping form; (field, problem) in a ValueError for a bad one."""
    if not isinstance(raw, dict):
        raise ValueError(("ack", "must be a mapping"))
    unknown = set(raw) - {"required", "deadline", "escalate"}
    if unknown:
        raise ValueError((f"ack.{sorted(unknown)[0]}", "is not a known key (required, deadline, escalate)"))
    required = raw.get("required", False)
    if not isinstance(required, bool):
        raise ValueError(("ack.required", "must be true or false"))
    deadline = None
    if raw.get("deadline") is not None:
        deadline = _duration(raw["deadline"], "ack.deadline")
    steps = raw.get("escalate") or []
    if not isinstance(steps, list):
        raise ValueError(("ack.escalate", "must be a list"))
    escalate = []
    for i, step in enumerate(steps):
        where = f"ack.escalate[{i}]"
        if not isinstance(step, dict) or set(step) != {"after", "channels"}:
            raise ValueError((where, "must be a mapping of `after` and `channels`"))
        channels = step["channels"]
        if not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels):
            raise ValueError((f"{where}.channels", "must be a non-empty list of channel names"))
        for channel in channels:
            if channel not in known_channels:
                raise ValueError((f"{where}.channels", f"names unknown channel {channel!r}"))
        escalate.append((_duration(step["after"], f"{where}.after"), tuple(dict.fromkeys(channels))))
    if escalate and not required:
        raise ValueError(("ack.escalate", "needs `required: true` (only a notice awaiting acknowledgement escalates)"))
    return AckPolicy(required, deadline, tuple(sorted(escalate, key=lambda s: s[0])))


def _duration(value, where):
    try:
        return parse_duration(value)
    except ValueError as error:
        raise ValueError((where, str(error)))


NONE = AckPolicy(False, None, ())
