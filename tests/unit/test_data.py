"""Validation of load data: each problem gives a specific message naming the rows."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from smartgrid.engine.csv_files import load_series, read_csv
from smartgrid.engine.data import readings_from_records, validate
from smartgrid.errors import DataValidationError, InsufficientHistoryError
from tests.helpers.paths import DATA
from tests.helpers.series import write_csv


def hourly(n: int, start: str = "2024-01-01T00:00:00", value=lambda i: 1000 + 100 * np.sin(i / 3.8)):
    t0 = np.datetime64(start, "s")
    return [(str(t0 + np.timedelta64(i, "h")), f"{value(i):.3f}") for i in range(n)]


def codes(exc: DataValidationError) -> set[str]:
    return {p.code for p in exc.problems}


def test_reads_gzip_and_plain_alike(tmp_path: Path) -> None:
    rows = hourly(72)
    a = load_series(write_csv(tmp_path / "a.csv", rows))
    b = load_series(write_csv(tmp_path / "b.csv.gz", rows))
    assert a.step_s == b.step_s == 3600
    np.testing.assert_array_equal(a.load, b.load)


def test_timezones_are_converted_to_utc_and_naive_means_utc() -> None:
    r = readings_from_records(["2024-03-01T01:00:00+01:00", "2024-03-01T00:15:00Z", "2024-03-01 00:30:00"], [1, 2, 3])
    assert [str(t) for t in r.timestamps] == ["2024-03-01T00:00:00", "2024-03-01T00:15:00", "2024-03-01T00:30:00"]


@pytest.mark.parametrize("minutes", [5, 15, 30, 60])
def test_resolution_is_inferred(tmp_path: Path, minutes: int) -> None:
    t0 = np.datetime64("2024-01-01T00:00:00", "s")
    rows = [(str(t0 + np.timedelta64(i * minutes, "m")), 500 + i % 7) for i in range(3 * 1440 // minutes)]
    s = load_series(write_csv(tmp_path / "x.csv", rows))
    assert s.resolution_minutes == minutes
    assert s.steps_per_day == 1440 // minutes


def test_duplicates_named_by_row(tmp_path: Path) -> None:
    rows = hourly(60)
    rows.insert(10, rows[9])
    with pytest.raises(DataValidationError) as e:
        load_series(write_csv(tmp_path / "d.csv", rows))
    p = next(p for p in e.value.problems if p.code == "duplicate_timestamp")
    assert p.rows == (11,)
    assert "row 11" in p.message and "repeats row 10" in p.message


def test_unordered_named_by_row(tmp_path: Path) -> None:
    rows = hourly(60)
    rows[20], rows[21] = rows[21], rows[20]
    with pytest.raises(DataValidationError) as e:
        load_series(write_csv(tmp_path / "u.csv", rows))
    assert codes(e.value) == {"unordered_timestamp"}
    assert "row 22" in str(e.value) and "sort" in str(e.value)


def test_gaps_are_reported_with_counts_and_can_be_filled(tmp_path: Path) -> None:
    rows = hourly(96)
    del rows[30:33]  # 3 missing hours after data row 30
    del rows[60]  # 1 missing hour
    path = write_csv(tmp_path / "g.csv", rows)
    with pytest.raises(DataValidationError) as e:
        load_series(path)
    msg = str(e.value)
    assert "2 gap(s) with 4 missing reading(s)" in msg
    assert "gap after row 30: 3 missing reading(s) from 2024-01-02T06:00:00Z to 2024-01-02T08:00:00Z" in msg
    s = load_series(path, fill_gaps_up_to=3)
    assert s.filled_steps == 4 and not np.isnan(s.load).any()
    assert "2 gap(s), 4 missing reading(s), 4 filled" in s.missing_report
    with pytest.raises(DataValidationError):
        load_series(path, fill_gaps_up_to=2)  # the 3-hour gap is longer


def test_non_numeric_negative_and_empty_loads(tmp_path: Path) -> None:
    rows = hourly(60)
    rows[4] = (rows[4][0], "abc")
    rows[7] = (rows[7][0], "-5")
    rows[9] = (rows[9][0], "")
    rows[11] = (rows[11][0], "nan")
    with pytest.raises(DataValidationError) as e:
        validate(read_csv(write_csv(tmp_path / "n.csv", rows)))
    msg = str(e.value)
    assert "row 5: load 'abc' is not a number" in msg
    assert "row 10: load is empty" in msg
    assert "row 12: load 'nan' is not finite" in msg
    rows[4] = (rows[4][0], "1000")
    rows[9] = (rows[9][0], "1000")
    rows[11] = (rows[11][0], "1000")
    with pytest.raises(DataValidationError) as e:
        load_series(write_csv(tmp_path / "n2.csv", rows))
    assert codes(e.value) == {"negative_load"}
    assert "row 8" in str(e.value)


def test_flatline_is_rejected_with_rows(tmp_path: Path) -> None:
    rows = hourly(96)
    for i in range(40, 48):
        rows[i] = (rows[i][0], "1234.000")
    with pytest.raises(DataValidationError) as e:
        load_series(write_csv(tmp_path / "f.csv", rows))
    assert codes(e.value) == {"flatline"}
    assert "1234 MW for 8 readings (8 h)" in str(e.value) and "rows 41-48" in str(e.value)
    # shorter than the configured flatline length is fine
    assert load_series(write_csv(tmp_path / "f2.csv", rows), flatline_hours=10).n == 96


def test_too_little_history(tmp_path: Path) -> None:
    with pytest.raises(InsufficientHistoryError) as e:
        load_series(write_csv(tmp_path / "s.csv", hourly(20)), min_days=1)
    assert "0.83 day(s)" in str(e.value)
    with pytest.raises(InsufficientHistoryError):
        load_series(write_csv(tmp_path / "one.csv", hourly(1)))


def test_unsupported_and_irregular_resolution(tmp_path: Path) -> None:
    t0 = np.datetime64("2024-01-01T00:00:00", "s")
    two_hourly = [(str(t0 + np.timedelta64(2 * i, "h")), 5) for i in range(50)]
    with pytest.raises(DataValidationError) as e:
        load_series(write_csv(tmp_path / "r.csv", two_hourly))
    assert codes(e.value) == {"unsupported_resolution"}
    rows = hourly(60)
    rows[30] = (str(np.datetime64(rows[30][0]) + np.timedelta64(7, "m")), rows[30][1])
    with pytest.raises(DataValidationError) as e:
        load_series(write_csv(tmp_path / "i.csv", rows))
    assert codes(e.value) == {"irregular_timestamp"} and "row 31" in str(e.value)


def test_header_and_file_problems(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="lacks required column"):
        read_csv(write_csv(tmp_path / "h.csv", hourly(5), header="time,load"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataValidationError, match="empty"):
        read_csv(tmp_path / "empty.csv")
    with pytest.raises(DataValidationError, match="not found"):
        read_csv(tmp_path / "missing.csv")
    (tmp_path / "bad.csv.gz").write_bytes(b"\x1f\x8b" + b"junk")
    with pytest.raises(DataValidationError, match="gzip"):
        read_csv(tmp_path / "bad.csv.gz")
    with pytest.raises(DataValidationError, match="row 3: timestamp 'yesterday' is not ISO 8601"):
        read_csv(write_csv(tmp_path / "t.csv", [*hourly(2), ("yesterday", "5")]))


def test_temperature_is_optional_and_checked(tmp_path: Path) -> None:
    rows = [(t, v, "" if i == 3 else "12.5") for i, (t, v) in enumerate(hourly(48))]
    s = load_series(write_csv(tmp_path / "t.csv", rows, "timestamp,load,temperature"))
    assert s.temperature is not None and np.isnan(s.temperature[3]) and s.temperature[4] == 12.5
    rows[5] = (rows[5][0], rows[5][1], "140")
    with pytest.raises(DataValidationError, match="temperature outside"):
        load_series(write_csv(tmp_path / "t2.csv", rows, "timestamp,load,temperature"))


def test_real_raw_pjme_file_is_rejected_with_specific_problems(tmp_path: Path) -> None:
    """The published PJME file (local clock, unsorted, DST duplicates, missing hours)."""
    out = ["timestamp,load"]
    for line in (DATA / "pjme_raw_2014_dst.csv").read_text().splitlines()[1:]:
        d, v = line.split(",")
        dd, mm, rest = d.split("-")
        yyyy, hm = rest.split(" ")
        out.append(f"{yyyy}-{mm}-{dd}T{hm}:00,{v}")
    path = tmp_path / "raw.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(out) + "\n").encode()))
    with pytest.raises(DataValidationError) as e:
        load_series(path)
    assert "unordered_timestamp" in codes(e.value)
    # sorted, the DST duplicate and the missing spring-forward hour remain
    body = sorted(out[1:])
    path.write_bytes(gzip.compress(("\n".join(["timestamp,load", *body]) + "\n").encode()))
    with pytest.raises(DataValidationError) as e:
        load_series(path)
    assert codes(e.value) == {"duplicate_timestamp"}
    assert "2014-11-02T02:00:00Z" in str(e.value)
    dedup = sorted(set(body), key=lambda r: r.split(",")[0])
    dedup = [r for i, r in enumerate(dedup) if i == 0 or r.split(",")[0] != dedup[i - 1].split(",")[0]]
    path.write_bytes(gzip.compress(("\n".join(["timestamp,load", *dedup]) + "\n").encode()))
    with pytest.raises(DataValidationError) as e:
        load_series(path)
    assert "gaps" in codes(e.value)
    assert "from 2014-03-09T03:00:00Z to 2014-03-09T03:00:00Z" in str(e.value)


def test_row_numbers_count_blank_lines_consistently(tmp_path: Path) -> None:
    rows = hourly(30)
    text = (
        "timestamp,load\n"
        + "\n".join(",".join(r) for r in rows[:3])
        + "\n\n"
        + "\n".join(",".join(r) for r in rows[3:])
    )
    text = text.replace(rows[5][1], "x", 1)
    path = tmp_path / "blank.csv"
    path.write_text(text + "\n")
    with pytest.raises(DataValidationError, match="row 7: load 'x' is not a number"):
        read_csv(path)
