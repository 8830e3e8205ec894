"""A benchmark target's verdict: met, NOT met, or "not judged: <why>" when the measurement
behind it fails a sanity check, so that a broken measurement never reads as a result."""
from __future__ import annotations


def verdict(met: bool, problems: list[str]) -> dict:
    """The JSON fields of a verdict: `met` is null when not judged, and says why."""
    if problems:
        return {"met": None, "verdict": "not judged", "not_judged_because": "; ".join(problems)}
    return {"met": bool(met), "verdict": "met" if met else "NOT met", "not_judged_because": None}


def verdict_text(v: dict) -> str:
    return f"not judged: {v['not_judged_because']}" if v["met"] is None else v["verdict"]


def rounds_problems(measured: list[float], asked: int, what: str) -> list[str]:
    """A median needs the measured rounds that were asked for, after the warm-up."""
    if not measured:
        return [f"{what}: no measured round, a warm-up only"]
    if len(measured) < asked:
        return [f"{what}: {len(measured)} measured rounds of the {asked} asked for"]
    return []
