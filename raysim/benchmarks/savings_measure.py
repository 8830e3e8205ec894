"""Benchmark S's arithmetic: what one run's rounds.parquet says, paired per seed
against FedAvg, spread over seeds, and the targets. Pure functions of the rows."""
from __future__ import annotations

import math
import statistics

from raysim.benchmarks.savings_arms import (
    BASELINE,
    CONTROLS,
    LEVELS,
    OPERATING_POINTS,
    REFERENCE_POINT,
    autoflip_label,
)

LAST_EVALS = 5
COST_KEYS = ("flops_executed", "flops_effective", "bytes_down", "bytes_up", "bytes_total", "sim_time_s")
SCOPES = ("incl_exploration", "excl_exploration")
ISO_COST_KEYS = ("flops_effective", "bytes_total")


def _number(value) -> bool:
    return value is not None and not math.isnan(value)


def last_mean(values: list[float], n: int = LAST_EVALS) -> float | None:
    return statistics.fmean(values[-n:]) if values else None


def cost_totals(rows: list[dict]) -> dict[str, float]:
    totals = {key: float(sum(r[key] for r in rows)) for key in COST_KEYS if key != "bytes_total"}
    totals["bytes_total"] = totals["bytes_down"] + totals["bytes_up"]
    return totals


def cost_curve(rows: list[dict]) -> dict[str, list]:
    """Per row (exploration first), the cumulative costs so far and the accuracy where evaluated."""
    curve = {"round": [], "accuracy": [], **{f"cum_{k}": [] for k in ("flops_executed", *ISO_COST_KEYS)}}
    running = dict.fromkeys(("flops_executed", *ISO_COST_KEYS), 0.0)
    for r in rows:
        running["flops_executed"] += r["flops_executed"]
        running["flops_effective"] += r["flops_effective"]
        running["bytes_total"] += r["bytes_down"] + r["bytes_up"]
        curve["round"].append(r["round"])
        curve["accuracy"].append(r["accuracy"] if _number(r.get("accuracy")) and r["phase"] != "explore" else None)
        for k, v in running.items():
            curve[f"cum_{k}"].append(v)
    return curve


def adjustment_churn(train: list[dict]) -> list[float]:
    """grown / kept in every round whose mask was readjusted at constant sparsity (drop fraction > 0)."""
    return [r["grown_fraction"] for r in train if _number(r.get("drop_fraction")) and r["drop_fraction"] > 0]


def measure_run(rows: list[dict]) -> dict:
    """What the comparison needs from one run's rows."""
    train = [r for r in rows if r["phase"] != "explore"]
    evals = [r["accuracy"] for r in train if _number(r.get("accuracy"))]
    last = train[-1] if train else {}
    up = sum(r["bytes_up"] for r in train)
    signal = sum(r.get("grow_signal_bytes") or 0 for r in train)
    return {
        "final_accuracy": last_mean(evals),
        "evaluations": len(evals),
        "plateau_gain_points": (100 * (last_mean(evals) - last_mean(evals[:-LAST_EVALS]))
                                if len(evals) >= 2 * LAST_EVALS else None),
        "exploration_rows": len(rows) - len(train),
        "incl_exploration": cost_totals(rows),
        "excl_exploration": cost_totals(train),
        "client_train_wall_s": float(sum(r.get("client_train_wall_s") or 0.0 for r in train)),
        "final_param_density": last.get("param_density"),
        "final_prunable_density": last.get("prunable_density"),
        "final_sparsity": last.get("sparsity"),
        "adjustment_churn": adjustment_churn(train),
        "grow_signal_share_of_uplink": signal / up if up else None,
        "curve": cost_curve(rows),
    }


# ---------------------------------------------------------------- over seeds

def spread(values: list[float]) -> dict:
    """Mean with its spread over seeds: std (n-1; null with one seed), min, max."""
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None, "min": min(values), "max": max(values)}


def reduction_pct(value: float, baseline: float) -> float | None:
    return 100.0 * (value - baseline) / baseline if baseline else None


def paired(per_seed: dict[int, float | None]) -> dict:
    kept = {s: v for s, v in per_seed.items() if v is not None}
    return {"per_seed": {str(s): v for s, v in kept.items()}} | spread(list(kept.values()))


def accuracy_points(run: dict, reference: dict) -> float | None:
    if run["final_accuracy"] is None or reference["final_accuracy"] is None:
        return None
    return 100.0 * (run["final_accuracy"] - reference["final_accuracy"])


def accuracy_at_cost(reference: dict, key: str, budget: float) -> float | None:
    """The reference's accuracy, as the mean of its last LAST_EVALS evaluations, at the last
    evaluated round whose cumulative `key` cost is within `budget` (None if none is)."""
    curve = reference["curve"]
    seen = []
    at = None
    for acc, cost in zip(curve["accuracy"], curve[f"cum_{key}"]):
        if acc is None:
            continue
        if cost > budget:
            break
        seen.append(acc)
        at = last_mean(seen)
    return at


def iso_cost_points(run: dict, fedavg: dict, key: str) -> float | None:
    """Accuracy over FedAvg's at the same cumulative cost (exploration included)."""
    at = accuracy_at_cost(fedavg, key, run["incl_exploration"][key])
    return None if at is None or run["final_accuracy"] is None else 100.0 * (run["final_accuracy"] - at)


def aggregate_arm(runs: dict, label: str, seeds: list[int]) -> dict:
    """One arm over seeds; every difference paired with FedAvg on the same seed."""
    mine = {s: runs[label, s] for s in seeds if (label, s) in runs}
    out = {
        "seeds": sorted(mine),
        "final_accuracy": spread([m["final_accuracy"] for m in mine.values()]),
        **{scope: {k: spread([m[scope][k] for m in mine.values()]) for k in COST_KEYS} for scope in SCOPES},
        "final_param_density": spread([m["final_param_density"] for m in mine.values()]),
        "final_prunable_density": spread([m["final_prunable_density"] for m in mine.values()]),
        "run_wall_s": spread([m["run_wall_s"] for m in mine.values()]),
        "adjustment_churn_min": spread([min(m["adjustment_churn"]) if m["adjustment_churn"] else None
                                        for m in mine.values()]),
        "grow_signal_share_of_uplink": spread([m["grow_signal_share_of_uplink"] for m in mine.values()]),
        "plateau_gain_points": spread([m["plateau_gain_points"] for m in mine.values()]),
    }
    if label == BASELINE:
        return out
    fed = {s: runs[BASELINE, s] for s in mine}
    out["accuracy_vs_fedavg_points"] = paired({s: accuracy_points(m, fed[s]) for s, m in mine.items()})
    out["reduction_vs_fedavg_pct"] = {
        scope: {k: paired({s: reduction_pct(m[scope][k], fed[s][scope][k]) for s, m in mine.items()})
                for k in COST_KEYS}
        for scope in SCOPES
    }
    out["iso_cost_vs_fedavg_points"] = {k: paired({s: iso_cost_points(m, fed[s], k) for s, m in mine.items()})
                                        for k in ISO_COST_KEYS}
    # The FLOP clock checked against real execution: measured client training time over
    # FedAvg's, beside the executed-FLOPs ratio (both without exploration).
    out["client_train_wall_ratio"] = paired({s: m["client_train_wall_s"] / fed[s]["client_train_wall_s"]
                                             if fed[s]["client_train_wall_s"] else None for s, m in mine.items()})
    out["flops_executed_ratio"] = paired({s: m["excl_exploration"]["flops_executed"]
                                          / fed[s]["excl_exploration"]["flops_executed"] for s, m in mine.items()})
    return out


def paired_between(runs: dict, label: str, reference: str, seeds: list[int]) -> dict:
    return paired({s: accuracy_points(runs[label, s], runs[reference, s]) for s in seeds
                   if (label, s) in runs and (reference, s) in runs})


# ---------------------------------------------------------------- targets

def _target(name: str, text: str, checks: list[tuple[str, float | None, float, str]]) -> dict:
    """`checks`: (what, measured value, threshold, ">=" or "<="); met when every check holds,
    None when a value is missing (an arm was not run)."""
    rows = []
    for what, value, threshold, op in checks:
        ok = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        rows.append({"what": what, "value": value, "threshold": threshold, "op": op, "met": ok})
    met = None if any(r["met"] is None for r in rows) else all(r["met"] for r in rows)
    return {"target": name, "text": text, "checks": rows, "met": met}


def _mean(arms: dict, label: str, *path: str) -> float | None:
    node = arms.get(label)
    for key in path:
        if node is None:
            return None
        node = node.get(key)
    return node


def _reduction(arms: dict, label: str, key: str) -> float | None:
    return _mean(arms, label, "reduction_vs_fedavg_pct", "incl_exploration", key, "mean")


def check_targets(arms: dict, versus: dict) -> list[dict]:
    """T1-T4 of benchmark S. `versus[(a, b)]` is a's paired accuracy over b (points)."""
    p1 = autoflip_label(REFERENCE_POINT)
    t1 = _target("T1", "at P1: accuracy within 0.5 points of FedAvg (no seed below -1.5) at -25 % executed FLOPs, "
                       "-35 % effective FLOPs and -35 % bytes, exploration included", [
        ("mean Δ accuracy, points", _mean(arms, p1, "accuracy_vs_fedavg_points", "mean"), -0.5, ">="),
        ("worst seed Δ accuracy, points", _mean(arms, p1, "accuracy_vs_fedavg_points", "min"), -1.5, ">="),
        ("executed FLOPs %", _reduction(arms, p1, "flops_executed"), -25.0, "<="),
        ("effective FLOPs %", _reduction(arms, p1, "flops_effective"), -35.0, "<="),
        ("bytes %", _reduction(arms, p1, "bytes_total"), -35.0, "<="),
    ])
    t2_checks = []
    for point in OPERATING_POINTS:
        label = autoflip_label(point)
        for control, threshold in zip(CONTROLS, (1.0, 0.0)):
            t2_checks.append((f"{label} - {control}@{point}, points",
                              (versus.get((label, f"{control}@{point}")) or {}).get("mean"), threshold, ">="))
    t2 = _target("T2", "the guidance beats chance: AutoFLIP >= hybrid-random + 1 point and >= hybrid-magnitude "
                       "at P1 and P2", t2_checks)
    t3 = _target("T3", "adaptation pays: adaptive >= static at P1; >= 1 % of the mask moves in every adjustment "
                       "round; the grow signal <= 5 % of the uplink", [
        ("autoflip@P1 - autoflip_static@P1, points", (versus.get((p1, "autoflip_static@P1")) or {}).get("mean"),
         0.0, ">="),
        ("smallest grown share of the mask in an adjustment round (worst seed)",
         _mean(arms, p1, "adjustment_churn_min", "min"), 0.01, ">="),
        ("grow signal share of the uplink (worst seed)", _mean(arms, p1, "grow_signal_share_of_uplink", "max"),
         0.05, "<="),
    ])
    best = None
    for level in LEVELS:
        label = autoflip_label(level)
        eff, sent = _reduction(arms, label, "flops_effective"), _reduction(arms, label, "bytes_total")
        acc = _mean(arms, label, "accuracy_vs_fedavg_points", "mean")
        if None in (eff, sent, acc):
            continue
        candidate = (eff <= -48.8 and sent <= -35.5 and acc >= -1.0, acc, label, eff, sent)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    t4 = _target("T4", "the paper's level at some operating point: effective FLOPs -48.8 % and bytes -35.5 % "
                       "or better, exploration included, accuracy no more than 1 point below FedAvg",
                 [(f"{best[2]}: Δ accuracy, points", best[1], -1.0, ">="),
                  (f"{best[2]}: effective FLOPs %", best[3], -48.8, "<="),
                  (f"{best[2]}: bytes %", best[4], -35.5, "<=")] if best else
                 [("AutoFLIP sweep", None, -1.0, ">=")])
    return [t1, t2, t3, t4]


def explorer_label_coverage(labels_per_client: dict[int, set[int]], explorers: list[int], num_classes: int) -> dict:
    """How many of the classes the explorers' training data holds: read from the partition
    for the report only (the server never sees a label)."""
    covered = set().union(*(labels_per_client[k] for k in explorers)) if explorers else set()
    return {"explorers": len(explorers), "labels_covered": len(covered), "num_classes": num_classes}


__all__ = ["aggregate_arm", "check_targets", "measure_run", "paired_between", "spread"]
