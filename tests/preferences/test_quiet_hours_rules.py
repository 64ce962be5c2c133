"""The quiet-hours window: inside/outside, across midnight, across daylight-saving changes."""
import datetime

from app.preferences.quiet_hours import applies, held_until, inside
from app.domain import Event

UTC = datetime.timezone.utc
T = datetime.time


def window(start, end, channels=("email", "sms")):
    return {"start_time": start, "end_time": end, "channels": list(channels)}


def test_inside_same_day_and_across_midnight():
    assert inside(T(13, 0), T(12, 0), T(14, 0))
    assert not inside(T(14, 0), T(12, 0), T(14, 0))
    assert inside(T(23, 30), T(22, 0), T(7, 0))
    assert inside(T(6, 59), T(22, 0), T(7, 0))
    assert not inside(T(7, 0), T(22, 0), T(7, 0))
    assert not inside(T(12, 0), T(22, 0), T(7, 0))
    assert not inside(T(12, 0), T(9, 0), T(9, 0))


def test_held_until_end_of_overnight_window_next_morning():
    now = datetime.datetime(2026, 3, 10, 23, 0, tzinfo=UTC)
    assert held_until(now, window(T(22, 0), T(7, 0)), None) == datetime.datetime(2026, 3, 11, 7, 0, tzinfo=UTC)


def test_held_until_after_midnight_is_same_day():
    now = datetime.datetime(2026, 3, 11, 3, 0, tzinfo=UTC)
    assert held_until(now, window(T(22, 0), T(7, 0)), None) == datetime.datetime(2026, 3, 11, 7, 0, tzinfo=UTC)


def test_outside_is_not_held():
    now = datetime.datetime(2026, 3, 11, 12, 0, tzinfo=UTC)
    assert held_until(now, window(T(22, 0), T(7, 0)), "Europe/Paris") is None


def test_user_time_zone_is_used():
    # 21:30 UTC is 22:30 in Paris (winter, UTC+1): inside 22:00-07:00 there; ends 06:00 UTC
    now = datetime.datetime(2026, 1, 15, 21, 30, tzinfo=UTC)
    assert held_until(now, window(T(22, 0), T(7, 0)), "Europe/Paris") == datetime.datetime(2026, 1, 16, 6, 0, tzinfo=UTC)
    assert held_until(now, window(T(22, 0), T(7, 0)), None) is None


def test_across_spring_forward():
    # Paris springs forward on 2026-03-29 at 02:00 -> 03:00. Window 22:00-07:00, held at 23:00 local
    # on the 28th (22:00 UTC): released at 07:00 CEST = 05:00 UTC, once.
    now = datetime.datetime(2026, 3, 28, 22, 0, tzinfo=UTC)
    assert held_until(now, window(T(22, 0), T(7, 0)), "Europe/Paris") == datetime.datetime(2026, 3, 29, 5, 0, tzinfo=UTC)


def test_window_ending_in_the_skipped_hour():
    # end 02:30 does not exist on 2026-03-29 in Paris: it resolves forward by the gap,
    # to 03:30 CEST = 01:30 UTC, and the delivery is released once
    now = datetime.datetime(2026, 3, 28, 23, 0, tzinfo=UTC)   # 00:00 local
    assert held_until(now, window(T(22, 0), T(2, 30)), "Europe/Paris") == datetime.datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


def test_across_fall_back_released_once_at_first_occurrence():
    # Paris falls back on 2026-10-25 at 03:00 -> 02:00. A window ending 02:30 occurs twice; release at the first.
    now = datetime.datetime(2026, 10, 24, 22, 30, tzinfo=UTC)  # 00:30 CEST
    assert held_until(now, window(T(22, 0), T(2, 30)), "Europe/Paris") == datetime.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


def test_urgent_locked_and_in_app_never_held():
    plain = Event("chat", "message_received", ("system", "email"))
    urgent = Event("security", "login_alert", ("system", "email"), locked=True, urgent=True)
    w = window(T(0, 0), T(23, 59))
    assert applies(w, "email", plain)
    assert not applies(w, "system", plain)
    assert not applies(w, "email", urgent)
    assert not applies(w, "sms", Event("x", "y", ("sms",), urgent=True))
    assert not applies(window(T(0, 0), T(23, 59), channels=["sms"]), "email", plain)
