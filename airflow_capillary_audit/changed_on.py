"""
Read times: Capillary's ``changedOn`` in every spelling it uses, and the operator's window bounds.

Capillary documents no format for ``changedOn``; its endpoints send ISO 8601 with ``Z`` or an
offset, a date-time without offset, and epoch milliseconds as a number or a digit string. This
module is pure: it imports nothing from Airflow and does no I/O.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo

UTC = timezone.utc

# 1e11 seconds is the year 5138 while 1e11 milliseconds is 1973-03-03: no real timestamp is ambiguous.
EPOCH_MILLISECONDS_FROM = 100_000_000_000

# The standard library's reader, tried before this module's pattern. A module attribute, so that a
# test on Python 3.11+ can stand in 3.10's narrower reader and reach the pattern.
fromisoformat = datetime.fromisoformat

_EPOCH_NAIVE = datetime(1970, 1, 1)
# The tz database has no two clock changes within three days, and none over 24 hours: a time in a
# fold or gap has different offsets a day before and a day after it.
_DAY = timedelta(days=1)

# Python 3.10's fromisoformat reads neither "Z", "+0000" nor 1-5 or 7+ digit fractions.
_ISO_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r" ?(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?",
    re.ASCII,
)

# What may stand between the date and the time of a ``changedOn`` on the fast path.
_SEPARATORS = ("T", " ")
# What may follow the minutes (seconds, or nothing) and the seconds (a fraction, or nothing) there.
_AFTER_MINUTES = (":", "")
_AFTER_SECONDS = (".", ",", "")

_WINDOW_HINT = "give an ISO 8601 string such as 2026-11-24T00:00:00+00:00 or a datetime"


class ChangedOnError(ValueError):
    """Raised when a ``changedOn`` value is not a date-time this module can read."""

    def __init__(self, raw: object) -> None:
        self.raw = raw
        super().__init__(
            f"changedOn {raw!r} is not a date-time: expected ISO 8601 (2025-05-08T08:56:57Z, "
            "2025-06-19T05:16:36.000+0000), 'YYYY-MM-DD HH:MM:SS' or epoch milliseconds"
        )


@dataclass
class LocalTimeCounts:
    """
    Count the ``changedOn`` values without offset that a clock change of their zone makes unclear.

    :param ambiguous: times that happen twice, in the hour (or so) that repeats when clocks go back.
    :param nonexistent: times that never happen, in the hour (or so) skipped when clocks go forward.
    """

    ambiguous: int = 0
    nonexistent: int = 0


def parse_changed_on(raw: object, default_tz: tzinfo = UTC) -> datetime | None:
    """
    Read a ``changedOn`` value as an aware datetime in UTC.

    Capillary documents no format, and its endpoints use all of these, which are all read:

    * ISO 8601 with ``Z`` or an offset with or without a colon, any fraction length:
      ``2025-05-08T08:56:57Z``, ``2025-06-19T05:16:36.000+0000``, ``...T05:16:36.12+05:30``;
      fractions beyond microseconds are truncated.
    * A date-time without offset, ``T`` or space separated, optional fraction:
      ``2022-08-18 12:00:00``; it is read as a wall-clock time in ``default_tz``. Where the zone's
      clocks change, as Python reads such a time with ``fold=0``: a time that happens twice
      (``2026-11-01 01:30`` in New York, where 02:00 goes back to 01:00) is the earlier of its two
      instants (``05:30Z``, not ``06:30Z``); a time that never happens (``2026-03-08 02:30`` in New
      York, where 02:00 jumps to 03:00) is read with the offset in force before the jump, so it lands
      as far past the jump as it names a time past 02:00 (``07:30Z``, which is 03:30 in New York).
    * Epoch time as an int, a float or an optionally signed string of ASCII digits: a value whose
      absolute value is at least 1e11 is milliseconds, a smaller one seconds (1e11 seconds would
      be the year 5138, 1e11 milliseconds is 1973). An 8-digit string such as ``20250508`` is
      therefore epoch seconds, not a date.

    :param raw: the ``changedOn`` value as Capillary sent it.
    :param default_tz: zone of times without an offset: a ``zoneinfo.ZoneInfo``, a pendulum
        timezone or a ``datetime.timezone`` (pytz zones are not supported).
    :return: the time in UTC, or None when ``raw`` is None or a blank string.
    :raises ChangedOnError: for anything else, booleans included.
    """
    moment = parse_changed_on_naive(raw, default_tz)
    return None if moment is None else moment.replace(tzinfo=UTC)


def parse_changed_on_naive(
    raw: object, default_tz: tzinfo = UTC, local_times: LocalTimeCounts | None = None
) -> datetime | None:
    """
    Read ``changedOn`` as :func:`parse_changed_on` does, but as a naive datetime in UTC.

    Naive datetimes compare and format in half the time of aware ones, which matters per row; the
    common UTC spellings are read by stripping the offset instead of converting.

    :param local_times: a value without offset that falls in a fold or gap of ``default_tz`` is
        counted into it; the reading is the same with it or without.
    """
    if raw.__class__ is str and not raw.isdigit():
        zone: tzinfo
        if raw[-1:] == "Z":
            text, zone = raw[:-1], UTC
        elif raw[-5:] == "+0000":
            text, zone = raw[:-5], UTC
        elif raw[-6:] == "+00:00":
            text, zone = raw[:-6], UTC
        else:
            text, zone = raw, default_tz
        # Only a whole date and time goes to fromisoformat, which takes any character between the two
        # (it reads "2025-05-08+05:30" as 05:30 that day, not midnight at +05:30) and before a fraction.
        if (
            text[4:5] == "-"
            and text[7:8] == "-"
            and text[10:11] in _SEPARATORS
            and text[13:14] == ":"
            and text[16:17] in _AFTER_MINUTES
            and text[19:20] in _AFTER_SECONDS
        ):
            try:
                moment = fromisoformat(text)
            except ValueError:
                pass
            else:
                if moment.tzinfo is None:
                    if zone is UTC:
                        return moment
                    try:
                        return _local_to_utc(moment, zone, local_times)
                    except OverflowError:  # the zone's offset pushes 0001-01-01 or 9999-12-31 out of range
                        raise ChangedOnError(raw) from None
    elif raw.__class__ is int:
        return _from_epoch(raw, raw)
    return reference_changed_on_naive(raw, default_tz, local_times)


def changed_on_text(raw: object) -> str:
    """Return ``changedOn`` as it looked in Capillary's JSON: a string as is, anything else as JSON text."""
    if isinstance(raw, str):
        return raw
    try:
        return json.dumps(raw, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(raw)


def reference_changed_on_naive(
    raw: object, default_tz: tzinfo = UTC, local_times: LocalTimeCounts | None = None
) -> datetime | None:
    """
    Read ``changedOn`` as :func:`parse_changed_on_naive` does, one case at a time, with no shortcut.

    This is the reading the fast path must agree with, value for value: it takes every spelling the
    fast path takes and the rest, and the tests hold the two side by side.
    """
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise ChangedOnError(raw)
    if isinstance(raw, (int, float)):
        return _from_epoch(raw, raw)
    if isinstance(raw, datetime):
        moment = raw
    elif isinstance(raw, str):
        text = raw.strip()
        if not text:
            return None
        digits = text[1:] if text[0] in "+-" else text
        if digits.isascii() and digits.isdigit():
            if len(digits) > 20:  # far beyond any datetime, and int() refuses very long digit strings
                raise ChangedOnError(raw)
            return _from_epoch(int(text), raw)
        parsed = read_iso(text)
        if parsed is None:
            raise ChangedOnError(raw)
        moment = parsed
    else:
        raise ChangedOnError(raw)
    try:
        if moment.tzinfo is None:
            return moment if default_tz is UTC else _local_to_utc(moment, default_tz, local_times)
        return moment.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:  # an offset pushing 0001-01-01 or 9999-12-31 out of range
        raise ChangedOnError(raw) from None


def _local_to_utc(moment: datetime, zone: tzinfo, local_times: LocalTimeCounts | None) -> datetime:
    """Return a wall-clock time of ``zone`` as naive UTC, as ``astimezone`` would; count a fold or gap."""
    # The offset astimezone(UTC) subtracts, without the two aware datetimes it would build on the way.
    offset = zone.utcoffset(moment)
    if offset is None:  # a zone that does not know its offset: astimezone reads the worker's zone
        return moment.replace(tzinfo=zone).astimezone(UTC).replace(tzinfo=None)
    if local_times is not None and _near_clock_change(moment, zone):
        # fold=0 asks for the offset in force before the change, fold=1 for the one after it.
        before = zone.utcoffset(moment.replace(fold=0))
        after = zone.utcoffset(moment.replace(fold=1))
        if before is not None and after is not None:
            if before > after:
                local_times.ambiguous += 1
            elif before < after:
                local_times.nonexistent += 1
    return moment - offset


def _near_clock_change(moment: datetime, zone: tzinfo) -> bool:
    """Tell whether ``zone`` has a different offset a day before ``moment`` than a day after it."""
    try:
        return zone.utcoffset(moment - _DAY) != zone.utcoffset(moment + _DAY)
    except OverflowError:  # within a day of 0001-01-01 or 9999-12-31: look closely
        return True


def _from_epoch(number: int | float, raw: object) -> datetime:
    try:
        if number.__class__ is int:
            if abs(number) >= EPOCH_MILLISECONDS_FROM:
                seconds, milliseconds = divmod(number, 1000)
                return _EPOCH_NAIVE + timedelta(0, seconds, milliseconds * 1000)
            return _EPOCH_NAIVE + timedelta(0, number)
        if not math.isfinite(number):
            raise ChangedOnError(raw)
        if abs(number) >= EPOCH_MILLISECONDS_FROM:
            return _EPOCH_NAIVE + timedelta(milliseconds=number)
        return _EPOCH_NAIVE + timedelta(seconds=number)
    except OverflowError:
        raise ChangedOnError(raw) from None


def read_iso(text: str) -> datetime | None:
    """
    Read an ISO 8601 date or date-time in the extended format, naive or aware, or return None.

    One grammar on every Python version and every path (:func:`read_iso_pattern`): Python's own
    ``fromisoformat`` reads more on 3.11 than on 3.10 (week dates, the basic format ``20250508``)
    and takes any character between date and time, so ``2025-05-08+05:30`` would be 05:30 that day.
    Here a date followed by an offset is midnight at that offset.
    """
    return read_iso_pattern(text)


def read_iso_pattern(text: str) -> datetime | None:
    """
    Read an ISO 8601 date or date-time with this module's own pattern, or return None.

    It reads what Python 3.10's ``datetime.fromisoformat`` refuses: ``Z`` and ``z``, offsets
    without a colon or without minutes (``+0530``, ``-03``), a space before the offset, and
    fractions of any length (truncated to microseconds). Missing time parts are zero.

    :param text: the text, without surrounding blanks.
    :return: the datetime, aware when the text has an offset; None when the text is not ISO 8601
        or names no real date or time (``2025-02-30``, an offset of 24 hours or more).
    """
    match = _ISO_DATE_TIME.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zulu, sign, off_hours, off_minutes = match.groups()
    zone: tzinfo | None = None
    try:
        if zulu:
            zone = UTC
        elif sign:
            offset = timedelta(hours=int(off_hours), minutes=int(off_minutes or 0))
            zone = timezone(-offset if sign == "-" else offset)
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int(fraction[:6].ljust(6, "0")) if fraction else 0,
            tzinfo=zone,
        )
    except ValueError:
        return None


def parse_window_bound(value: object, field: str) -> datetime | None:
    """
    Read a window bound (``changed_since`` or ``changed_until``) as an aware datetime in UTC.

    Accepted: a ``datetime`` (pendulum's ``DateTime`` included; naive means UTC), a ``date``
    (midnight UTC), or an ISO 8601 string as Airflow renders ``{{ data_interval_start }}``
    (``2026-11-24T00:00:00+00:00``) or ``{{ ds }}`` (``2026-11-24``); a string without offset
    means UTC. The result is always a plain ``datetime`` with ``tzinfo=timezone.utc``.

    :param value: the bound as given to the operator.
    :param field: the operator argument's name, used in error messages.
    :return: the bound, or None when ``value`` is None or a blank string.
    :raises ValueError: naming ``field`` when ``value`` cannot be read.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        parsed = read_iso(text)
        if parsed is None:
            raise ValueError(f"{field}: cannot read {value!r} as a date-time; {_WINDOW_HINT}")
        moment = parsed
    else:
        raise ValueError(
            f"{field}: cannot read {value!r} (a {type(value).__name__}) as a date-time; {_WINDOW_HINT}"
        )
    try:
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{field}: {value!r} is out of the range of date-times; {_WINDOW_HINT}") from None
    if type(moment) is not datetime:
        moment = datetime(
            moment.year,
            moment.month,
            moment.day,
            moment.hour,
            moment.minute,
            moment.second,
            moment.microsecond,
            tzinfo=UTC,
        )
    return moment


def validate_window(since: datetime | None, until: datetime | None) -> None:
    """
    Check that a window has room for a change: it must not end before it starts, nor where it starts.

    A window whose start equals its end keeps no row. On Airflow 3 that is what a cron schedule such
    as ``"@daily"`` gives ``{{ data_interval_start }}`` and ``{{ data_interval_end }}`` (both the
    logical date), unless the DAG's timetable makes data intervals, so the message says how to fix it.

    :param since: the start, as :func:`parse_window_bound` returns it.
    :param until: the end, as :func:`parse_window_bound` returns it.
    :raises ValueError: naming ``changed_since`` and ``changed_until`` when ``since >= until``.
    """
    if since is None or until is None:
        return
    if since > until:
        raise ValueError(
            f"changed_since ({since.isoformat()}) is after changed_until ({until.isoformat()}); "
            "give a changed_since at or before changed_until"
        )
    if since == until:
        raise ValueError(
            f"changed_since and changed_until are both {since.isoformat()}: a window of no length keeps "
            "no change. On Airflow 3 a cron schedule such as '@daily' gives each run a data interval of "
            "no length (data_interval_start = data_interval_end); give the DAG "
            "schedule=CronDataIntervalTimetable('0 0 * * *', timezone='UTC') (from airflow.timetables."
            "interval; airflow.sdk from 3.2), or set [scheduler] create_cron_data_intervals = True, or "
            "use templates that span a day, such as changed_since='{{ macros.ds_add(ds, -1) }}' and "
            "changed_until='{{ ds }}'"
        )


def naive_window(since: object, until: object) -> tuple[datetime | None, datetime | None]:
    """
    Read and check a window; return its bounds as naive UTC, comparable with :func:`parse_changed_on_naive`.

    :raises ValueError: as :func:`parse_window_bound` and :func:`validate_window` do.
    """
    start = parse_window_bound(since, "changed_since")
    end = parse_window_bound(until, "changed_until")
    validate_window(start, end)
    return (
        None if start is None else start.replace(tzinfo=None),
        None if end is None else end.replace(tzinfo=None),
    )
