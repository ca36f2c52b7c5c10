"""The forecasting contract the planner and the operator rely on.

`forecast(history, horizon_steps, quantiles)` in `foreshard.core.forecasting` returns a
`Forecast`: counts per step (same step as the history) for the `horizon_steps` intervals that
follow the history, a point forecast and one array per requested quantile. Values are never
negative and never NaN; quantile arrays are non-decreasing in q.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from foreshard.core.series import FloatArray


class InsufficientHistory(ValueError):
    """Too little usable history to fit or even to fall back; the message says how much is needed."""


@dataclass(frozen=True)
class Forecast:
    key: str
    start_s: float  # start of the first forecast interval (= history.end_s)
    step_s: float
    mean: FloatArray  # point forecast, counts per step
    quantiles: dict[float, FloatArray] = field(default_factory=dict)  # q -> counts per step
    model: str = ""  # chosen model, e.g. "ets(add,add,daily)"
    trusted: bool = True  # False when the series' realised error says: fall back to reactive sizing

    def quantile(self, q: float) -> FloatArray:
        return self.quantiles[q]
