"""Maintenance windows: cron starts in a time zone, open or closed at a time, refused specs."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from edgeops.fleet.rollouts import windows as w
from edgeops.fleet.rollouts.settings import RolloutSettingsError, parse_request, parse_window

BERLIN = ZoneInfo("Europe/Berlin")


def ts(*args, tz=BERLIN) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()


def test_cron_fields():
    c = w.Cron.parse("*/15 2-4 * * 1-5")
    assert c.minutes == {0, 15, 30, 45} and c.hours == {2, 3, 4} and c.weekdays == {1, 2, 3, 4, 5}
    assert w.Cron.parse("0 0 * * 7").weekdays == {0}  # 7 is Sunday too
    assert w.Cron.parse("5,10 1 1 1 *").minutes == {5, 10}
    # day of month and day of week both restricted: either matches (cron's rule)
    c = w.Cron.parse("0 3 1 * 0")
    assert c.matches(dt.datetime(2026, 12, 1, 3, 0)) and c.matches(dt.datetime(2026, 12, 6, 3, 0)) and not c.matches(dt.datetime(2026, 12, 2, 3, 0))


@pytest.mark.parametrize("text,what", [("0 2 * *", "5"), ("61 2 * * *", "minute"), ("0 2 * 13 *", "month"), ("0 x * * *", "hour"), ("*/0 * * * *", "step"), ("5-1 * * * *", "minute")])
def test_bad_cron_is_refused_naming_the_field(text, what):
    with pytest.raises(ValueError, match=what):
        w.Cron.parse(text)


def test_open_since_and_next_start_in_a_time_zone():
    cron, tz = "0 2 * * *", "Europe/Berlin"  # 02:00-04:00 Berlin time
    assert w.open_since(cron, 7200, tz, ts(2026, 12, 4, 3, 30)) == ts(2026, 12, 4, 2, 0)
    assert w.open_since(cron, 7200, tz, ts(2026, 12, 4, 4, 0)) is None  # the end is not inside
    assert w.open_since(cron, 7200, tz, ts(2026, 12, 4, 1, 59)) is None
    assert w.next_start(cron, tz, ts(2026, 12, 4, 12, 0)) == ts(2026, 12, 5, 2, 0)
    # 02:00 Berlin is 01:00 UTC in winter
    assert w.open_since(cron, 7200, "UTC", ts(2026, 12, 4, 3, 30)) == ts(2026, 12, 4, 2, 0, tz=ZoneInfo("UTC"))
    assert w.next_start("0 2 30 2 *", tz, ts(2026, 12, 4, 12, 0)) is None  # 30 February never comes


def test_devices_outside_their_windows():
    windows = [parse_window("tag=site=berlin;0 2 * * *;2h;Europe/Berlin")]
    devices = [("b1", "x86", {"site": "berlin"}), ("p1", "x86", {"site": "paris"})]
    noon = ts(2026, 12, 4, 12, 0)
    assert w.devices_outside_window(windows, devices, noon) == {"b1": [0]}  # paris: no window selects it
    assert w.next_opening(windows, [0], noon) == ts(2026, 12, 5, 2, 0)
    assert w.devices_outside_window(windows, devices, ts(2026, 12, 5, 2, 30)) == {}
    # any one open window of a device is enough
    both = windows + [parse_window("profile=x86;0 12 * * *;1h;Europe/Berlin")]
    assert w.devices_outside_window(both, devices, noon) == {}


def test_window_settings_text_forms_and_errors():
    s = parse_request({"bundle": "digits@2.0.0", "maintenance": ["tag=site=berlin;0 2 * * *;2h;Europe/Berlin", "all;30 1 * * 6;90m"]})
    assert [(x.cron, x.duration_s, x.timezone) for x in s.maintenance] == [("0 2 * * *", 7200, "Europe/Berlin"), ("30 1 * * 6", 5400, "UTC")]
    assert s.maintenance[0].select.tags == {"site": "berlin"}
    for bad, what in (("all;0 2 * *;1h", "cron"), ("all;0 2 * * *;1h;Mars/Olympus", "time zone"), ("all;0 2 * * *;200h", "duration_s"), ("all;0 2 * * *", "SELECT;CRON;DURATION")):
        with pytest.raises(RolloutSettingsError, match=what):
            parse_request({"bundle": "digits@2.0.0", "maintenance": [bad]})
