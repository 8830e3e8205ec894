"""Benchmark S: the arithmetic on hand-made rows, the arms it runs, then a tiny real run."""
import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from raysim.benchmarks import add_bench_parsers, bench_main
from raysim.benchmarks.savings import choose_rounds, judged_targets
from raysim.benchmarks.savings_arms import LEVELS, SAVINGS_CONFIG, all_arms, select_arms
from raysim.benchmarks.savings_measure import accuracy_at_cost, aggregate_arm, check_targets, measure_run
from raysim.config import ConfigError, config_from_dict, load_config


def _row(round_, acc, flops, bytes_, phase="train", **extra):
    return {"round": round_, "phase": phase, "accuracy": acc, "flops_executed": flops, "flops_effective": flops / 2,
            "bytes_down": bytes_, "bytes_up": bytes_, "sim_time_s": 1.0, "client_train_wall_s": flops / 100, **extra}


ACCS = [0.1, None, 0.3, 0.4, 0.5, 0.6, 0.6, 0.7, 0.7, 0.8, 0.8, 0.9]
FEDAVG_ROWS = [_row(r + 1, a, 100, 10) for r, a in enumerate(ACCS)]
AUTOFLIP_ROWS = [_row(0, 0.05, 60, 20, phase="explore")] + [
    _row(r + 1, a, 40, 4, prunable_density=0.3, drop_fraction=0.2 if r in (3, 4) else 0.0,
         grown_fraction=0.05 if r == 3 else 0.02, grow_signal_bytes=1)
    for r, a in enumerate(ACCS)]


def test_measure_run_averages_the_last_five_evaluations_and_separates_exploration():
    m = measure_run(AUTOFLIP_ROWS)
    assert m["final_accuracy"] == pytest.approx((0.7 + 0.7 + 0.8 + 0.8 + 0.9) / 5)
    # The 5 evaluations before the last 5 (the unevaluated round is skipped, not counted as 0).
    assert m["plateau_gain_points"] == pytest.approx(100 * (0.78 - (0.3 + 0.4 + 0.5 + 0.6 + 0.6) / 5))
    assert m["exploration_rows"] == 1 and m["final_prunable_density"] == 0.3
    assert m["incl_exploration"]["flops_executed"] == 60 + 12 * 40 and m["excl_exploration"]["flops_executed"] == 480
    assert m["incl_exploration"]["bytes_total"] == 2 * (20 + 12 * 4)
    assert m["adjustment_churn"] == [0.05, 0.02]  # only the rounds whose drop fraction was above 0
    assert m["grow_signal_share_of_uplink"] == pytest.approx(12 / (12 * 4))
    assert m["client_train_wall_s"] == pytest.approx(12 * 0.4)  # exploration left out
    assert m["curve"]["accuracy"][0] is None  # the exploration row is no point of the training curve
    assert m["curve"]["cum_bytes_total"][:2] == [40, 48]


def test_fedavgs_accuracy_is_read_off_its_own_curve_at_a_given_cost():
    fedavg = measure_run(FEDAVG_ROWS)
    # Cumulative effective FLOPs run 50, 100, 150, ...: at 160 rounds 1-3 are in, round 2 unevaluated.
    assert accuracy_at_cost(fedavg, "flops_effective", 160) == pytest.approx((0.1 + 0.3) / 2)
    assert accuracy_at_cost(fedavg, "flops_effective", 49) is None
    assert accuracy_at_cost(fedavg, "flops_effective", 1e9) == pytest.approx(fedavg["final_accuracy"])


def _runs():
    runs = {}
    for seed, scale in ((0, 1.0), (1, 2.0)):  # seed 1's FedAvg costs twice as much: its reduction must not change
        def scaled(rows):
            return measure_run([r | {"flops_executed": r["flops_executed"] * scale,
                                     "client_train_wall_s": r["client_train_wall_s"] * scale} for r in rows])
        runs["fedavg", seed] = scaled(FEDAVG_ROWS)
        runs["autoflip@P1", seed] = scaled(AUTOFLIP_ROWS)
    for run in runs.values():
        run["run_wall_s"] = 1.0
    return runs


def test_differences_are_paired_per_seed_then_spread_over_seeds():
    agg = aggregate_arm(_runs(), "autoflip@P1", [0, 1])
    incl = agg["reduction_vs_fedavg_pct"]["incl_exploration"]["flops_executed"]
    excl = agg["reduction_vs_fedavg_pct"]["excl_exploration"]["flops_executed"]
    assert incl["per_seed"] == {"0": pytest.approx(-55.0), "1": pytest.approx(-55.0)}  # 540 vs 1200
    assert excl["mean"] == pytest.approx(-60.0) and excl["std"] == pytest.approx(0.0)
    assert agg["accuracy_vs_fedavg_points"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert agg["client_train_wall_ratio"]["mean"] == pytest.approx(0.4)
    assert agg["flops_executed_ratio"]["mean"] == pytest.approx(0.4)
    # Iso-cost: AutoFLIP spent 30 + 12 * 20 = 270 effective FLOPs; FedAvg had reached round 5 by then.
    iso = agg["iso_cost_vs_fedavg_points"]["flops_effective"]
    assert iso["per_seed"]["0"] == pytest.approx(100 * (0.78 - (0.1 + 0.3 + 0.4 + 0.5) / 4))
    assert agg["adjustment_churn_min"]["min"] == pytest.approx(0.02)


def test_targets_are_met_missed_or_not_measured_with_their_numbers():
    arms = {"autoflip@P1": aggregate_arm(_runs(), "autoflip@P1", [0, 1])}
    t1, t2, t3, t4 = check_targets(arms, {("autoflip@P1", "autoflip_static@P1"): {"mean": 0.3}})
    assert t1["target"] == "T1" and t1["met"] is True  # level accuracy, -55 % executed FLOPs, bytes -60 %
    assert [c["met"] for c in t1["checks"]] == [True, True, True, True, True]
    assert t2["met"] is None  # the hybrid controls did not run
    # Adaptive beats static and the mask moves, but the grow signal is a quarter of the uplink.
    assert [c["met"] for c in t3["checks"]] == [True, True, False] and t3["met"] is False
    assert t3["checks"][2]["value"] == pytest.approx(0.25)
    assert t4["met"] is True and "autoflip@P1" in t4["checks"][0]["what"]
    missed = check_targets(arms, {("autoflip@P1", "autoflip_static@P1"): {"mean": -0.3}})[2]
    assert missed["checks"][0]["met"] is False
    assert all(t["met"] is None for t in check_targets({}, {}))


def test_targets_are_judged_on_the_projects_workload_only():
    base = load_config(SAVINGS_CONFIG)
    arms = {"autoflip@P1": aggregate_arm(_runs(), "autoflip@P1", [0, 1])}
    own = judged_targets(base, arms, {})
    assert [t["target"] for t in own["targets"]] == ["T1", "T2", "T3", "T4"] and own["targets_not_judged_because"] is None
    other = judged_targets(config_from_dict(base.model_dump(mode="json") | {"rounds": 3}), arms, {})
    assert other == {"targets": [], "targets_not_judged_because": "targets are defined for raysim/configs/savings.yaml only"}


def test_rounds_fill_the_budget_and_seeds_give_way_below_ten_rounds():
    arms = select_arms(["autoflip@P2"])
    assert [a.label for a in arms] == ["fedavg", "autoflip@P2"]
    # 2 seeds x (2 runs x 5 s + 2 rounds of exploration + 2 R rounds) x 1 s <= 100 s  ->  R = 19
    assert choose_rounds(100, 1.0, 5.0, 2.0, arms, 2, max_rounds=40) == (19, 2)
    assert choose_rounds(1e6, 1.0, 5.0, 2.0, arms, 2, max_rounds=40) == (40, 2)
    # 2 seeds would leave (20 - 12) / 2 = 4 rounds, under the 10 the plateau check needs: 1 seed, (40 - 12) / 2.
    assert choose_rounds(40, 1.0, 5.0, 2.0, arms, 2, max_rounds=40) == (14, 1)
    assert choose_rounds(1, 1.0, 5.0, 2.0, arms, 2, max_rounds=40) == (5, 1)  # never fewer than the last-5 mean needs


def test_every_arm_is_one_change_of_the_base_and_the_sweep_has_four_levels():
    arms = all_arms()
    labels = [a.label for a in arms]
    assert len(labels) == len(set(labels)) and labels[:2] == ["fedavg", "autoflip@P1"]
    assert len(LEVELS) >= 4 and {"P1", "P2"} <= set(LEVELS)
    for method in ("autoflip", "hybrid_random", "hybrid_magnitude"):
        assert {a.point for a in arms if a.method == method and a.group == "sweep"} == set(LEVELS)
    assert {a.label for a in arms if a.group == "matched"} == {"prunefl@P1", "feddst@P1"}
    assert select_arms(["feddst@P1"])[1].label == "autoflip@P1"  # the matched density comes from it
    with pytest.raises(ConfigError, match="fedprox"):
        select_arms(["fedprox@P1"])


def _parse(argv):
    parser = argparse.ArgumentParser(prog="raysim")
    add_bench_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.fixture
def tiny_base(tmp_path):
    base = {
        "name": "tiny", "seed": 0, "rounds": 3,
        "data": {"dataset": "synthetic", "num_clients": 12, "partition": {"scheme": "natural"}},
        "model": {"name": "mlp", "hidden": 16, "layers": 1},
        "clients": {"per_round": 4, "local_epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.05}},
        "algorithm": {"pruning": {"explore_fraction": 0.5, "explore_epochs": 1, "allocation": "layer",
                                  "growth": "gradient", "ramp_rounds": 1, "adjust_every": 1, "warm_start": True}},
        "eval": {"every": 1, "clients": False},
        "backend": {"name": "inprocess"},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def _rows(run_dir):
    return pq.read_table(Path(run_dir) / "rounds.parquet").to_pylist()


def test_tiny_benchmark_writes_the_comparison_from_the_runs_rows(tmp_path, tiny_base, capsys):
    out = tmp_path / "bench"
    chosen = ["autoflip@P1", "hybrid_random@P1", "prunefl@P1", "autoflip_static@P1"]
    args = _parse(["bench", "savings", "--budget-minutes", "10", "--seeds", "0", "1", "--arms", *chosen,
                   "--out", str(out), "--config", str(tiny_base)])
    assert bench_main(args) == 0

    result = json.loads((out / "comparison.json").read_text())
    assert [a["label"] for a in result["arms"]] == ["fedavg", *chosen[:2], *chosen[2:]]
    assert result["seeds"] == [0, 1] and result["rounds"] == 3 and result["plan"]["rounds_from"] == "budget"
    assert (out / "calibration").is_dir() and "--config" in result["command"]
    assert len(result["runs"]) == 5 * 2
    runs = {(r["label"], r["seed"]): r for r in result["runs"]}
    for seed in (0, 1):  # PruneFL keeps as many prunable weights as AutoFLIP at P1 on the same seed
        assert runs["prunefl@P1", seed]["pruning"]["sparsity"] == pytest.approx(
            1 - runs["autoflip@P1", seed]["final_prunable_density"])
        assert runs["prunefl@P1", seed]["final_prunable_density"] == pytest.approx(
            runs["autoflip@P1", seed]["final_prunable_density"], abs=0.01)
    assert runs["hybrid_random@P1", 0]["pruning"]["structured_fraction"] == LEVELS["P1"][0]

    # Recompute one reduction and one accuracy straight from rounds.parquet.
    fedavg, autoflip = _rows(runs["fedavg", 1]["run_dir"]), _rows(runs["autoflip@P1", 1]["run_dir"])
    sent = lambda rows: sum(r["bytes_down"] + r["bytes_up"] for r in rows)  # noqa: E731
    reduction = result["per_arm"]["autoflip@P1"]["reduction_vs_fedavg_pct"]["incl_exploration"]["bytes_total"]
    assert reduction["per_seed"]["1"] == pytest.approx(100 * (sent(autoflip) - sent(fedavg)) / sent(fedavg))
    assert autoflip[0]["phase"] == "explore" and all(r["phase"] == "train" for r in autoflip[1:])
    assert runs["fedavg", 1]["final_accuracy"] == pytest.approx(sum(r["accuracy"] for r in fedavg) / len(fedavg))
    versus = {(v["arm"], v["reference"]): v for v in result["versus"]}
    static = _rows(runs["autoflip_static@P1", 0]["run_dir"])
    expected = 100 * (runs["autoflip@P1", 0]["final_accuracy"] - sum(r["accuracy"] for r in static[1:]) / 3)
    assert versus["autoflip@P1", "autoflip_static@P1"]["per_seed"]["0"] == pytest.approx(expected)
    assert set(result["explorer_label_coverage"]) == {"0", "1"}
    assert all(c["explorers"] == 6 and 1 <= c["labels_covered"] <= c["num_classes"]
               for c in result["explorer_label_coverage"].values())

    for name in ("comparison.md", "pareto_flops.png", "pareto_bytes.png"):
        assert (out / name).stat().st_size > 0
    assert "| prunefl@P1 |" in (out / "comparison.md").read_text()
    # Not the project's workload: no target is stamped, and the last line says why.
    assert result["targets"] == [] and "savings.yaml only" in result["targets_not_judged_because"]
    assert "Not judged: targets are defined for raysim/configs/savings.yaml only" in (out / "comparison.md").read_text()
    printed = capsys.readouterr().out
    last = " ".join(printed.rstrip().splitlines()[-3:])  # rich wraps at the terminal's width
    assert " ".join(last.split()).endswith("targets are defined for raysim/configs/savings.yaml only "
                                           "(base config: tiny.yaml)")
    assert "T1 (" not in printed


def test_dense_algorithms_run_beside_fedavg_only_when_named(tmp_path, tiny_base):
    dense = {"fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold"}
    assert {a.label for a in all_arms() if a.group == "dense"} == dense
    assert not dense & {a.label for a in select_arms(None)}  # the default set fills the budget already
    out = tmp_path / "bench"
    args = _parse(["bench", "savings", "--rounds", "2", "--seeds", "0", "--arms", "fedprox", "scaffold",
                   "--out", str(out), "--config", str(tiny_base)])
    assert bench_main(args) == 0
    result = json.loads((out / "comparison.json").read_text())
    runs = {r["label"]: r for r in result["runs"]}
    assert set(runs) == {"fedavg", "fedprox", "scaffold"}
    assert load_config(Path(runs["scaffold"]["run_dir"]) / "config.yaml").algorithm.name == "scaffold"
    arms = result["per_arm"]
    # SCAFFOLD also sends control variates: more bytes for the same training FLOPs, and the table says so.
    scaffold = arms["scaffold"]["reduction_vs_fedavg_pct"]["incl_exploration"]
    assert scaffold["bytes_total"]["mean"] > 0 and scaffold["flops_executed"]["mean"] == pytest.approx(0)
    assert "| scaffold |" in (out / "comparison.md").read_text() and "| fedprox |" in (out / "comparison.md").read_text()


def test_refuses_a_non_empty_out_before_any_work(tmp_path, tiny_base):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    with pytest.raises(ConfigError, match="never overwrites"):
        bench_main(_parse(["bench", "savings", "--out", str(out), "--config", str(tiny_base)]))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
