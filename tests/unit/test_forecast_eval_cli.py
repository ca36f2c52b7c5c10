"""`foreshard forecast-eval` on a small canonical directory (the full run is a benchmark)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from foreshard.cli import main
from foreshard.cli.forecast_eval import horizon_steps, parse_duration
from foreshard.core.forecasting import evaluation
from foreshard.core.series import Series

pytestmark = pytest.mark.unit

STEP = 1800


def write_trace(
    directory: Path,
    key: str,
    values: np.ndarray,
    duplicate_at: int | None = None,
    skip: frozenset[int] = frozenset(),
) -> None:
    rows = ["timestamp,value"]
    for i, value in enumerate(values):
        if i in skip:
            continue  # a gap in the file: the reader must put NaN there, the forecaster clean it
        stamp = datetime.fromtimestamp(1_400_000_400 + i * STEP, UTC).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(f"{stamp},{value:g}")
        if i == duplicate_at:
            rows.append(f"{stamp},{value:g}")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{key}.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture
def traces(tmp_path: Path) -> Path:
    rng = np.random.default_rng(4)
    days = 20
    rate = 300 * (1.2 + np.sin(2 * np.pi * np.arange(48 * days) / 48))
    write_trace(tmp_path / "q", "seasonal", rng.poisson(rate).astype(float), duplicate_at=100)
    noisy = rng.poisson(20, 48 * days).astype(float)
    write_trace(tmp_path / "q", "flat", noisy, skip=frozenset({50, 51, 52}))
    return tmp_path


def evaluate(traces: Path) -> int:
    """One hour ahead over the fixture's traces, kept small (40 origins, 4 refits)."""
    args = ["--traces", str(traces), "--horizon", "1h", "--json", "--max-origins", "40", "--refits", "4"]
    return main(["forecast-eval", *args])


def test_the_last_line_is_one_json_object_with_the_issue_keys(
    traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = evaluate(traces)
    out = capsys.readouterr()
    assert code == 0
    summary = json.loads(out.out.strip().splitlines()[-1])
    expected = {"series", "horizon_steps", "mase", "ratio_vs_seasonal_naive", "ratio_vs_best_baseline"}
    assert expected | {"worst_series_ratio_vs_best_baseline", "coverage_p90", "per_series"} <= set(summary)
    assert summary["series"] == 2
    assert summary["horizon_steps"] == 2
    assert set(summary["mase"]) == {"naive", "seasonal_naive", "ses", "foreshard"}
    assert "[2/2]" in out.err  # progress goes to stderr


def test_the_seasonal_series_beats_the_baselines(traces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evaluate(traces)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["per_series"]["seasonal"]["ratio_vs_best_baseline"] < 0.9


def test_a_plot_is_written_for_the_chosen_keys(traces: Path, tmp_path: Path) -> None:
    out = tmp_path / "plot.png"
    args = [
        "forecast-eval",
        "--traces",
        str(traces),
        "--horizon",
        "30m",
        "--max-origins",
        "10",
        "--refits",
        "2",
    ]
    assert main([*args, "--plot", str(out), "--keys", "flat"]) == 0
    assert out.stat().st_size > 1000


def test_a_directory_without_traces_is_an_error_not_a_crash(tmp_path: Path) -> None:
    assert main(["forecast-eval", "--traces", str(tmp_path)]) == 2


@pytest.mark.parametrize(("text", "seconds"), [("15m", 900.0), ("1h", 3600.0), ("90", 90.0), ("1d", 86400.0)])
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_a_horizon_shorter_than_the_step_is_one_step() -> None:
    assert horizon_steps(900.0, 1800.0) == 1
    assert horizon_steps(3600.0, 300.0) == 12


def test_the_ratio_is_foreshard_over_the_best_baseline() -> None:
    result = evaluation.SeriesResult("k", 1, 10, {"naive": 2.0, "ses": 1.0, "foreshard": 0.8}, 0.9)
    assert result.ratio_vs_best_baseline == pytest.approx(0.8)


def test_a_series_shorter_than_a_day_is_scored_without_seasonal_naive() -> None:
    y = np.random.default_rng(1).poisson(50, 60).astype(float)
    result = evaluation.evaluate(Series("short", 0.0, 60.0, y), 5)
    assert "seasonal_naive" not in result.mase
    assert np.isfinite(result.mase["foreshard"])


def test_a_series_too_short_to_evaluate_is_skipped_and_said_so(
    traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_trace(traces / "q", "tiny", np.array([1.0, 2.0, 3.0]))
    assert (
        main(["forecast-eval", "--traces", str(traces), "--json", "--max-origins", "10", "--refits", "2"])
        == 0
    )
    out = capsys.readouterr()
    assert "skipped: tiny" in out.err
    assert json.loads(out.out.strip().splitlines()[-1])["series"] == 2


def test_a_directory_of_only_tiny_series_is_an_error(tmp_path: Path) -> None:
    write_trace(tmp_path, "tiny", np.array([1.0, 2.0, 3.0]))
    assert main(["forecast-eval", "--traces", str(tmp_path)]) == 2


def test_the_tuning_split_scores_the_window_before_the_test_window() -> None:
    y = np.arange(100, dtype=float)
    dev = evaluation.development_split(Series("k", 0.0, 60.0, y), 0.2)
    assert len(dev) == 80 and dev.values[-1] == 79.0 and dev.start_s == 0.0
    test_origins = evaluation.origins_for(100, 0.2, 200)
    dev_origins = evaluation.origins_for(len(dev), 0.2, 200)
    assert dev_origins.max() + 1 <= test_origins.min()  # no tuning origin scores a test interval


def test_only_and_dev_pick_and_shorten_the_series(traces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["forecast-eval", "--traces", str(traces), "--json", "--max-origins", "10", "--refits", "2"]
    assert main([*args, "--only", "flat", "--dev"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(summary["per_series"]) == ["flat"]
    assert summary["per_series"]["flat"]["origins"] == 10
