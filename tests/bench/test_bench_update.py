"""The update benchmark's figures, on a hand-made load: what it divides by what."""

from __future__ import annotations

import pytest

from tests.bench.bench_update import UpdateRound
from tests.bench.common import Completion, LoadRun


def _load(rate_per_s: dict[tuple[float, float], float], end_s: float) -> LoadRun:
    """One-row calls completing evenly at the given rates over [start, end) spans."""
    run_ = LoadRun("load", 8, wall_s=end_s)
    for (start_s, stop_s), rate in rate_per_s.items():
        count = round((stop_s - start_s) * rate)
        run_.completions += [Completion(start_s + (i + 0.5) / rate, 0.05, 1) for i in range(count)]
    return run_


def test_an_update_is_divided_by_its_quiet_window_and_noise_by_the_quiet_window_itself() -> None:
    # quiet 100/s for 5 s, then 80/s during a 3 s update
    run_ = _load({(0.0, 5.0): 100.0, (5.0, 8.0): 80.0}, 8.0)
    update = UpdateRound(0.0, 5.0, 5.2, 8.0, {0: 2}, {0: 70})
    assert update.before(run_).throughput_per_s == pytest.approx(100.0)
    assert update.during(run_).throughput_per_s == pytest.approx(80.0)
    assert update.ratio(run_) == pytest.approx(0.8)
    # no update: the quiet window's last 2.5 s (half of it: the update is longer) over its first
    assert update.quiet_ratio(run_) == pytest.approx(1.0)


def test_the_no_update_ratio_sees_a_drift_inside_the_quiet_window() -> None:
    # the machine slows down before the update starts: the control shows it, the update is not blamed for it alone
    run_ = _load({(0.0, 4.0): 100.0, (4.0, 5.0): 70.0, (5.0, 6.0): 70.0}, 6.0)
    update = UpdateRound(0.0, 5.0, 5.1, 6.0, {0: 2}, {0: 70})
    assert update.quiet_ratio(run_) == pytest.approx(70.0 / 100.0)  # last 1 s (as long as the update) over the first 4
    assert update.ratio(run_) == pytest.approx(70.0 / 94.0)
