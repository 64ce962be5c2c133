"""Quiet hours: when a delivery must wait, and until when.

The window is wall-clock time in the user's time zone (contacts; UTC when
unknown) and may cross midnight (22:00–07:00). The end is computed as a
local time and converted to UTC with zoneinfo, so across a daylight-saving
change the held delivery is released once, at the first moment the local
clock shows the end time (a nonexistent local time resolves forward, an
ambiguous one to its first occurrence).
"""
import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..channels import IN_APP


def zone(name):
    try:
        return ZoneInfo(name) if name else datetime.timezone.utc
    except (ZoneInfoNotFoundError, ValueError):
        return datetime.timezone.utc


def inside(local_time, start, end):
    """Whether a local time of day falls in [start, end), the window possibly crossing midnight."""
    if start == end:
        return False
    if start < end:
        return start <= local_time < end
    return local_time >= start or local_time < end


def _aware(day, at, tz):
    naive = datetime.datetime.combine(day, at)
    if tz is datetime.timezone.utc:
        return naive.replace(tzinfo=tz)
    local = naive.replace(tzinfo=tz, fold=0)
    # a nonexistent local time (clocks jumped forward) round-trips to another wall time: use the jump's end
    back = local.astimezone(datetime.timezone.utc).astimezone(tz)
    if back.replace(tzinfo=None) != naive:
        local = back
    return local


def held_until(now_utc, window, tz_name):
    """The UTC moment the window ends when `now_utc` is inside it, else None."""
    if window is None:
        return None
    tz = zone(tz_name)
    local = now_utc.astimezone(tz)
    start, end = window["start_time"], window["end_time"]
    if not inside(local.time().replace(tzinfo=None), start, end):
        return None
    for days in (0, 1):
        candidate = _aware(local.date() + datetime.timedelta(days=days), end, tz)
        if candidate > local:
            return candidate.astimezone(datetime.timezone.utc)
    return None


def applies(window, channel, event):
    """Quiet hours hold this channel of this event (never in-app, urgent or locked)."""
    return (window is not None and channel != IN_APP and channel in window["channels"]
            and not (event is not None and (event.urgent or event.locked)))
