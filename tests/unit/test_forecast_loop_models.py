"""spec.forecast.models reaches every fit of the operator's forecast loop, and the CRD's enum
names exactly the model classes the forecaster knows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from foreshard.api.orderparamforecast import TAIL, ForecastObject, Target
from foreshard.api.shardallocation import ForecastSettings, QueueSpec, ShardTemplate
from foreshard.core.forecasting import selection
from foreshard.core.series import Series
from foreshard.reconcile import forecasts

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
STEP = 300.0
NOW = 1_760_000_400.0


def enum_at(crd: Path, *path: str) -> list[str]:
    node = yaml.safe_load(crd.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for name in path:
        node = node["properties"][name] if name != "[]" else node["items"]
    return list(node["enum"])


@pytest.mark.parametrize("folder", ["crds", "helm/foreshard/files/crds"])
def test_the_crds_name_exactly_the_model_classes_the_forecaster_knows(folder: str) -> None:
    queue = REPO / folder / "foreshard.io_shardallocations.yaml"
    assert enum_at(queue, "spec", "forecast", "models", "[]") == list(selection.MODEL_CLASSES)
    opf = REPO / folder / "foreshard.io_orderparamforecasts.yaml"
    assert enum_at(opf, "spec", "model") == list(selection.MODEL_CLASSES)


@pytest.mark.parametrize(
    ("given", "expected"),
    [({}, None), ({"models": []}, None), ({"models": ["SES", "ETS"]}, ("ETS", "SES"))],
)
def test_forecast_settings_read_the_allowed_models(
    given: dict[str, list[str]], expected: tuple[str, ...] | None
) -> None:
    assert ForecastSettings.from_spec(given).models == expected


def queue(models: list[str] | None) -> QueueSpec:
    settings = {"prometheusURL": "http://prometheus:9090", "step": "5m", "longHorizon": "1h"}
    if models is not None:
        settings["models"] = models  # type: ignore[assignment]
    return QueueSpec(
        "orders", "default", 1, 4, 1024, ShardTemplate(), forecast=ForecastSettings.from_spec(settings)
    )


def history() -> dict[str, Series]:
    rng = np.random.default_rng(9)
    steps = 4 * 288
    wave = 1 + 0.5 * np.sin(2 * np.pi * np.arange(steps) / 288)
    start = NOW - steps * STEP
    return {
        "a": Series("a", start, STEP, rng.poisson(200 * wave).astype(float)),
        TAIL: Series(TAIL, start, STEP, rng.poisson(50 * wave).astype(float)),
    }


@pytest.mark.parametrize(
    "models",
    [["SeasonalNaive"], ["Naive", "SES"], ["ARIMA"], ["SARIMAX", "ETS", "Ensemble"]],
    ids=lambda m: "+".join(m),
)
def test_every_fit_of_the_loop_keeps_to_the_queues_models(models: list[str]) -> None:
    memo = forecasts.QueueMemo()
    found, problems, fits = forecasts._forecast_all(queue(models), {}, history(), ["a", TAIL], memo, NOW)
    assert not problems and fits == 2 and set(found) == {"a", TAIL}
    for state in memo.fits.values():
        classes = {selection.model_class(spec) for spec in state.fitted.specs}
        assert classes <= set(models), state.fitted.name
        assert found_model_is(found, state.fitted.name)


def found_model_is(found: dict[str, object], name: str) -> bool:
    return any(getattr(f, "model", None) == name for f in found.values())


def test_statsmodels_candidates_join_at_a_series_staggered_refit_not_at_its_first_fit() -> None:
    memo = forecasts.QueueMemo()
    forecasts._forecast_all(queue(None), {}, history(), ["a"], memo, NOW)
    statsmodels = ("ets(", "arima(", "sarimax(")
    assert not any(name.startswith(statsmodels) for name in memo.fits["a"].fitted.scores)
    memo.cycle = forecasts.REFIT_PERIOD  # "a" (row 0) is due again
    _, _, fits = forecasts._forecast_all(queue(None), {}, history(), ["a"], memo, NOW + STEP)
    scores = memo.fits["a"].fitted.scores
    assert fits == 1
    for prefix in (*statsmodels, "snaive(", "level(raw,"):
        assert any(name.startswith(prefix) for name in scores), (prefix, sorted(scores))


def opf(name: str, key: str, model: str | None) -> ForecastObject:
    return ForecastObject(name, "default", "orders", Target.of_key(key), model=model)


def test_an_opfs_model_is_the_only_class_its_series_is_fitted_with() -> None:
    forced = forecasts.forced_models([opf("mine", "a", "SeasonalNaive"), opf("other", "b", None)])
    assert forced == {"a": ("SeasonalNaive",)}
    memo = forecasts.QueueMemo()
    forecasts._forecast_all(queue(None), {}, history(), ["a", TAIL], memo, NOW, forced)
    assert {selection.model_class(s) for s in memo.fits["a"].fitted.specs} == {"SeasonalNaive"}
    assert memo.fits[TAIL].fitted.name != memo.fits["a"].fitted.name


def test_changing_the_allowed_models_refits_at_once_even_when_not_due() -> None:
    memo = forecasts.QueueMemo()
    forecasts._forecast_all(queue(None), {}, history(), ["a", TAIL], memo, NOW)
    memo.cycle = 2  # neither row is due (row 0 at cycle 12, row 1 at cycle 13)
    _, _, fits = forecasts._forecast_all(
        queue(None), {}, history(), ["a", TAIL], memo, NOW, {"a": ("Naive",)}
    )
    assert fits == 1 and memo.fits["a"].fitted.specs == (selection.NAIVE,)


def test_the_first_opf_by_name_decides_when_several_name_one_series() -> None:
    objects = [opf("zeta", "a", "ARIMA"), opf("alpha", "a", "SES")]
    assert forecasts.forced_models(objects) == {"a": ("SES",)}
