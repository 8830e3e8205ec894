"""What benchmark S runs: every arm is the base config with the method and its pruning
knobs changed, nothing else, so under one seed all arms share data, split, initial
weights and client sampling.

Operating points are (share of units removed per prunable layer, share of the
remaining prunable weights masked). AutoFLIP, hybrid-random and hybrid-magnitude run
at every level of the sweep (P1 and P2 are two of its levels) with identical shapes,
per-tensor densities and schedule. The unstructured baselines (PruneFL, FedDST) run
at P1 with as many prunable weights as AutoFLIP keeps there on the same seed, and
AutoFLIP's ablations run at P1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raysim.config import ConfigError

SAVINGS_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "savings.yaml"  # the base every arm changes

BASELINE = "fedavg"
AUTOFLIP = "autoflip"
CONTROLS = ("hybrid_random", "hybrid_magnitude")
SWEEP_METHODS = (AUTOFLIP, *CONTROLS)
MATCHED = ("prunefl", "feddst")  # density taken from AutoFLIP at P1 on the same seed
# Dense FL algorithms beside FedAvg, with their registered default parameters; opt-in
# (--arms), since the default set already fills the hour's budget.
DENSE = ("fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold")
REFERENCE_POINT = "P1"

# level -> (structured_fraction, sparsity); the order is the order of the sweep.
LEVELS = {"L1": (0.125, 0.15), "P1": (0.25, 0.30), "L3": (0.375, 0.40), "P2": (0.50, 0.50)}
OPERATING_POINTS = ("P1", "P2")


@dataclass(frozen=True)
class Arm:
    label: str
    method: str
    group: str  # baseline | sweep | matched | ablation | dense
    point: str | None = None
    pruning: dict = field(default_factory=dict)

    @property
    def matched(self) -> bool:
        return self.method in MATCHED


def _at(level: str) -> dict:
    structured, sparsity = LEVELS[level]
    return {"structured_fraction": structured, "sparsity": sparsity}


def autoflip_label(level: str) -> str:
    return f"{AUTOFLIP}@{level}"


# AutoFLIP's ablations at P1: each changes one thing against autoflip@P1.
ABLATIONS = (
    Arm("autoflip_static@P1", "autoflip_static", "ablation", "P1", _at("P1")),
    Arm("autoflip_unstructured@P1", "autoflip_unstructured", "ablation", "P1", _at("P1")),
    Arm("autoflip_structured@P1", "autoflip_structured", "ablation", "P1", _at("P1")),
    Arm("autoflip_random_growth@P1", AUTOFLIP, "ablation", "P1", _at("P1") | {"growth": "random"}),
    Arm("autoflip_cold_start@P1", AUTOFLIP, "ablation", "P1", _at("P1") | {"warm_start": False}),
)


def all_arms() -> list[Arm]:
    """Every arm, in run order: FedAvg, AutoFLIP at P1 (the matched baselines need its
    density), the sweep, the matched baselines, the ablations, the dense algorithms."""
    sweep = [Arm(autoflip_label(level) if m == AUTOFLIP else f"{m}@{level}", m, "sweep", level, _at(level))
             for level in LEVELS for m in SWEEP_METHODS]
    sweep.sort(key=lambda a: a.label != autoflip_label(REFERENCE_POINT))
    matched = [Arm(f"{m}@{REFERENCE_POINT}", m, "matched", REFERENCE_POINT) for m in MATCHED]
    dense = [Arm(m, m, "dense") for m in DENSE]
    return [Arm(BASELINE, BASELINE, "baseline"), *sweep, *matched, *ABLATIONS, *dense]


def select_arms(labels: list[str] | None) -> list[Arm]:
    """The arms named (by default all but the dense algorithms), always with FedAvg and, for a
    matched baseline, autoflip@P1."""
    arms = all_arms()
    if not labels:
        return [a for a in arms if a.group != "dense"]
    known = {a.label for a in arms}
    unknown = [x for x in labels if x not in known]
    if unknown:
        raise ConfigError(f"unknown arm(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    wanted = set(labels) | {BASELINE}
    if any(a.matched and a.label in wanted for a in arms):
        wanted.add(autoflip_label(REFERENCE_POINT))
    return [a for a in arms if a.label in wanted]
