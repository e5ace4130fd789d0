"""Features: only what is known at forecast time, correct lags, calendar, any resolution."""

from __future__ import annotations

import numpy as np
import pytest

from smartgrid.engine.data import Series
from smartgrid.engine.features import FEATURE_INDEX as F
from smartgrid.engine.features import FEATURE_NAMES, HolidayCalendar, baseline_lags, build_features, day_ahead_rows
from tests.helpers.series import upsample


def _features(s: Series, cal: HolidayCalendar, load=None, temp=None):
    targets, origins = day_ahead_rows(s.n, s.start, s.step_s)
    return build_features(
        s.load if load is None else load,
        s.temperature if temp is None else temp,
        s.start,
        s.step_s,
        targets,
        origins,
        cal,
    )


def test_no_look_ahead(gefcom: Series, calendar: HolidayCalendar) -> None:
    """Changing any load at or after a row's origin (midnight of its day) changes nothing
    in that row; changing the temperature after the forecast day changes nothing either."""
    base = _features(gefcom, calendar)
    rng = np.random.default_rng(0)
    S = gefcom.steps_per_day
    for origin in rng.choice(np.unique(base.origins), size=8, replace=False):
        load = gefcom.load.copy()
        load[origin:] = rng.uniform(0, 1e5, size=load.size - origin)
        temp = gefcom.temperature.copy()
        temp[origin + S :] = rng.uniform(-40, 40, size=temp.size - origin - S)
        moved = _features(gefcom, calendar, load, temp)
        rows = base.origins == origin
        np.testing.assert_array_equal(moved.X[rows], base.X[rows])
        np.testing.assert_array_equal(moved.scale[rows], base.scale[rows])
        # and the perturbation is visible to later origins (the test can fail)
        later = base.origins >= origin + S
        assert not np.array_equal(moved.X[later], base.X[later])


def test_lags_and_level(gefcom: Series, calendar: HolidayCalendar) -> None:
    fb = _features(gefcom, calendar)
    S = gefcom.steps_per_day
    i = 40 * S + 17  # 17:00 on day 40
    row = int(np.flatnonzero(fb.targets == i)[0])
    o = fb.origins[row]
    assert o == 40 * S
    scale = gefcom.load[o - 7 * S : o].mean()
    assert fb.scale[row] == pytest.approx(scale)
    for name, d in (("lag_1d", 1), ("lag_2d", 2), ("lag_7d", 7), ("lag_14d", 14)):
        assert fb.X[row, F[name]] == pytest.approx(gefcom.load[i - d * S] / scale, rel=1e-6)
    assert fb.X[row, F["last_known"]] == pytest.approx(gefcom.load[o - 1] / scale, rel=1e-6)
    assert fb.X[row, F["prev_day_max"]] == pytest.approx(gefcom.load[o - S : o].max() / scale, rel=1e-6)
    assert fb.X[row, F["temperature"]] == pytest.approx(gefcom.temperature[i], rel=1e-6)
    assert fb.X[row, F["temp_day_mean"]] == pytest.approx(gefcom.temperature[o : o + S].mean(), rel=1e-5)
    assert fb.X[row, F["hour"]] == 17.0
    lags = baseline_lags(gefcom.load, gefcom.step_s, fb.targets[row : row + 1], fb.origins[row : row + 1])
    assert lags[0, 1] == pytest.approx(gefcom.load[i - 7 * S])


def test_holidays_follow_the_configured_country() -> None:
    days = np.array(["2024-07-04", "2024-10-03", "2024-07-05"], dtype="datetime64[D]")
    assert HolidayCalendar("US").is_holiday(days).tolist() == [True, False, False]
    assert HolidayCalendar("DE").is_holiday(days).tolist() == [False, True, False]


def test_same_features_at_15_minutes(gefcom: Series, calendar: HolidayCalendar) -> None:
    fine = upsample(gefcom.slice(0, 24 * 40), 15)
    fb = _features(fine, calendar)
    assert fb.X.shape[1] == len(FEATURE_NAMES)
    assert fine.steps_per_day == 96
    # 17:15 has hour 17.25; lag_1d is the reading 96 steps earlier
    i = 30 * 96 + 69
    row = int(np.flatnonzero(fb.targets == i)[0])
    assert fb.X[row, F["hour"]] == pytest.approx(17.25)
    assert fb.X[row, F["lag_1d"]] * fb.scale[row] == pytest.approx(fine.load[i - 96], rel=1e-5)


def test_short_history_gives_nan_not_garbage(gefcom: Series, calendar: HolidayCalendar) -> None:
    s = gefcom.slice(0, 24 * 3)
    fb = build_features(s.load, None, s.start, s.step_s, np.arange(72, 96), np.full(24, 72), calendar)
    assert np.isnan(fb.scale).all()  # no 7 days of history
    assert np.isnan(fb.X[:, F["lag_7d"]]).all()
    assert np.isnan(fb.X[:, F["temperature"]]).all()


def test_shipped_calendar_matches_the_holidays_package():
    """The pre-computed calendar read at start-up is what `holidays` computes (regenerate with
    `smartgrid calendar --country US` when the package changes)."""
    from smartgrid.engine.features import _holiday_days, calendar_file, compute_holiday_days

    assert calendar_file("US", None).is_file()
    np.testing.assert_array_equal(_holiday_days("US", None), compute_holiday_days("US", None))
