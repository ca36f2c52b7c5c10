"""What `kubectl foreshard` shows, from recorded bodies: pure functions, no client.

Each view returns plain data (what `--json` prints) and has a text rendering for people.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from foreshard.api.conditions import FORECASTING, READY
from foreshard.api.names import ANNOTATION_APPROVE_PLAN

Body = Mapping[str, Any]
IN_FLIGHT = {"Prepare", "Fence", "Switch", "Resume", "Drain", "RollingBack"}


class Refused(ValueError):
    """The request cannot be honoured as asked; the message says why and what to do."""


def condition(body: Body, kind: str) -> Mapping[str, Any]:
    conditions = (body.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), {})


def forecast_trust(body: Body) -> dict[str, Any]:
    """Trusted when the Forecasting condition is True; the accuracy numbers when there are any."""
    status = body.get("status") or {}
    forecasting = condition(body, FORECASTING)
    accuracy = status.get("forecastAccuracy") or {}
    return {
        "trusted": forecasting.get("status") == "True",
        "reason": forecasting.get("reason", ""),
        "message": forecasting.get("message", ""),
        "mase": accuracy.get("mase"),
        "coverage90": accuracy.get("coverage90"),
    }


def queue_status(body: Body) -> dict[str, Any]:
    meta, status = body["metadata"], body.get("status") or {}
    migrations = [m for m in status.get("migrations") or [] if m.get("phase") in IN_FLIGHT]
    return {
        "name": meta["name"],
        "namespace": meta.get("namespace", ""),
        "ready": condition(body, READY).get("status", "Unknown"),
        "shards": {
            "desired": (status.get("shards") or {}).get("desired"),
            "ready": (status.get("shards") or {}).get("ready"),
        },
        "epoch": (status.get("routing") or {}).get("epoch"),
        "migrations": migrations,
        "forecast": forecast_trust(body),
        "conditions": list(status.get("conditions") or []),
        "lastDecision": status.get("lastDecision", ""),
    }


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(headers), *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _trust(forecast: Mapping[str, Any]) -> str:
    word = "trusted" if forecast["trusted"] else f"untrusted ({forecast['reason'] or 'no condition'})"
    return word if forecast["mase"] is None else f"{word}, MASE {forecast['mase']:.2f}"


def status_text(queues: Sequence[Mapping[str, Any]]) -> str:
    if not queues:
        return "No ShardAllocations found."
    rows = [
        [
            q["namespace"],
            q["name"],
            q["ready"],
            f"{_cell(q['shards']['ready'])}/{_cell(q['shards']['desired'])}",
            q["epoch"],
            len(q["migrations"]),
            _trust(q["forecast"]),
        ]
        for q in queues
    ]
    text = table(["NAMESPACE", "QUEUE", "READY", "SHARDS", "EPOCH", "MIGRATIONS", "FORECAST"], rows)
    if len(queues) == 1:
        text += "\n" + _details(queues[0])
    return text


def _details(queue: Mapping[str, Any]) -> str:
    parts = []
    if queue["migrations"]:
        rows = [
            [
                m.get("id"),
                m.get("key") or m.get("slot"),
                f"{m.get('source')} -> {m.get('target')}",
                m.get("phase"),
                m.get("startedAt"),
            ]
            for m in queue["migrations"]
        ]
        parts.append(
            "\nMigrations in flight:\n" + table(["ID", "SLOT/KEY", "SHARDS", "PHASE", "SINCE"], rows)
        )
    if queue["conditions"]:
        rows = [
            [c.get("type"), c.get("status"), c.get("reason"), c.get("message")] for c in queue["conditions"]
        ]
        parts.append("\nConditions:\n" + table(["TYPE", "STATUS", "REASON", "MESSAGE"], rows))
    if queue["lastDecision"]:
        parts.append(f"\nLast decision: {queue['lastDecision']}")
    return "\n".join(parts)


def plan(body: Body) -> dict[str, Any]:
    """status.plan with its moves (a list, or a count before moves are itemised) and its evidence."""
    found = (body.get("status") or {}).get("plan")
    if not found:
        raise Refused(f"{body['metadata']['name']} has no plan yet (the operator writes one each pass).")
    moves = found.get("moveList")
    hidden = {"id", "moves", "moveList", "targetShards", "approved"}
    evidence = {k: v for k, v in found.items() if k not in hidden}
    approved = (body["metadata"].get("annotations") or {}).get(ANNOTATION_APPROVE_PLAN)
    return {
        "queue": body["metadata"]["name"],
        "namespace": body["metadata"].get("namespace", ""),
        "id": found.get("id"),
        "targetShards": found.get("targetShards"),
        "currentShards": ((body.get("status") or {}).get("shards") or {}).get("desired"),
        "moves": moves if isinstance(moves, list) else [],
        "moveCount": int(found.get("moves") or 0),
        "evidence": evidence,
        "approved": approved == found.get("id"),
    }


def plan_text(shown: Mapping[str, Any]) -> str:
    lines = [
        f"Plan {shown['id']} for {shown['namespace']}/{shown['queue']}: "
        f"{_cell(shown['currentShards'])} -> {shown['targetShards']} shards, {shown['moveCount']} moves"
        + (" (approved)" if shown["approved"] else ""),
    ]
    lines += [f"  {key}: {value}" for key, value in shown["evidence"].items()]
    if shown["moves"]:
        rows = [
            [m.get("slot", m.get("key")), m.get("source"), m.get("target"), m.get("wave"), m.get("bytes")]
            for m in shown["moves"]
        ]
        lines.append(table(["SLOT/KEY", "FROM", "TO", "WAVE", "BYTES"], rows))
        if shown["moveCount"] > len(shown["moves"]):
            lines.append(f"  ... and {shown['moveCount'] - len(shown['moves'])} more moves")
    if not shown["approved"]:
        lines.append(f"Approve it: kubectl foreshard approve {shown['queue']} --plan {shown['id']}")
    return "\n".join(lines)


def approval(body: Body, plan_id: str) -> tuple[str, dict[str, str]]:
    """The plan id to approve and the annotation that approves it; Refused when the plan moved on."""
    current = plan(body)["id"]
    if plan_id != current:
        raise Refused(
            f"the plan of {body['metadata']['name']} is now {current}, not {plan_id}: "
            "read it again (kubectl foreshard plan) and approve the id you have reviewed."
        )
    return current, {ANNOTATION_APPROVE_PLAN: current}


def find_forecast(forecasts: Sequence[Body], key: str, queue: str | None) -> Body:
    """The OrderParamForecast of `key` (spec.key, or the object's name), for `queue` when given."""
    matches = [
        f
        for f in forecasts
        if (f.get("spec", {}).get("key") == key or f["metadata"]["name"] == key)
        and (queue is None or (f.get("spec", {}).get("queueRef") or {}).get("name") == queue)
    ]
    if not matches:
        raise Refused(f"no OrderParamForecast for key {key!r}" + (f" of queue {queue!r}" if queue else ""))
    if len(matches) > 1:
        queues = sorted((m.get("spec", {}).get("queueRef") or {}).get("name", "?") for m in matches)
        raise Refused(f"key {key!r} is forecast for several queues ({', '.join(queues)}): pass --queue")
    return matches[0]


def forecast_points(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every point of every horizon (status.horizons[].points), each tagged with its horizon."""
    return [
        {"horizon": horizon.get("name", ""), **point}
        for horizon in status.get("horizons") or []
        for point in horizon.get("points") or []
    ]


def forecast(body: Body) -> dict[str, Any]:
    status, spec = body.get("status") or {}, body.get("spec") or {}
    trusted: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Trusted"), {}
    )
    return {
        "name": body["metadata"]["name"],
        "queue": (spec.get("queueRef") or {}).get("name"),
        "key": spec.get("key") or ("__tail__" if spec.get("tail") else None),
        "model": status.get("model"),
        "why": status.get("why"),
        "fittedAt": status.get("fittedAt"),
        "stepSeconds": status.get("stepSeconds"),
        "accuracy": status.get("accuracy") or {},
        "trusted": trusted.get("status") == "True",
        "points": forecast_points(status),
    }


def forecast_text(shown: Mapping[str, Any]) -> str:
    head = (
        f"{shown['queue']}/{shown['key']}: model {_cell(shown['model'])}, fitted {_cell(shown['fittedAt'])}, "
        f"{'trusted' if shown['trusted'] else 'not trusted'}"
    )
    if not shown["points"]:
        return head + "\nNo forecast points yet."
    columns = ["horizon", "time", "mean", "p10", "p50", "p90", "p99"]
    rows = [[p.get(c) for c in columns] for p in shown["points"]]
    return head + "\n" + table([c.upper() for c in columns], rows)
