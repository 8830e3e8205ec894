"""Benchmark S (savings against FedAvg): the arithmetic on hand-made rows, then a tiny real run."""
import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from raysim.benchmarks import add_bench_parsers, bench_main
from raysim.benchmarks.savings import aggregate_method, check_targets, choose_rounds, measure_run, order_methods
from raysim.config import ConfigError


def _row(round_, acc, flops, bytes_, phase="train", density=None):
    return {"round": round_, "phase": phase, "accuracy": acc, "flops_executed": flops, "flops_effective": flops / 2,
            "bytes_down": bytes_, "bytes_up": bytes_, "sim_time_s": 1.0, "param_density": density}


FEDAVG_ROWS = [_row(1, 0.1, 100, 10), _row(2, None, 100, 10), _row(3, 0.3, 100, 10), _row(4, 0.5, 100, 10),
               _row(5, 0.7, 100, 10)]
AUTOFLIP_ROWS = [_row(0, None, 60, 20, phase="explore", density=1.0)] + [
    _row(r, a, 40, 4, density=0.3) for r, a in ((1, 0.2), (2, 0.4), (3, 0.4), (4, 0.5), (5, 0.6))]


def test_measure_run_separates_exploration_and_averages_last_three_evaluations():
    m = measure_run(AUTOFLIP_ROWS)
    assert m["final_accuracy"] == pytest.approx((0.4 + 0.5 + 0.6) / 3)
    assert m["exploration_rows"] == 1 and m["final_param_density"] == 0.3
    assert m["incl_exploration"]["flops_executed"] == 260 and m["excl_exploration"]["flops_executed"] == 200
    assert m["incl_exploration"]["bytes_total"] == 2 * (20 + 5 * 4)
    fedavg = measure_run(FEDAVG_ROWS)
    assert fedavg["final_accuracy"] == pytest.approx(0.5)  # the unevaluated round is skipped, not counted as 0
    assert fedavg["incl_exploration"] == fedavg["excl_exploration"]


def test_reductions_are_paired_per_seed_then_spread_over_seeds():
    runs = {}
    for seed, scale in ((0, 1.0), (1, 2.0)):  # seed 1's FedAvg costs twice as much: its reduction must not change
        runs["fedavg", seed] = measure_run([r | {"flops_executed": r["flops_executed"] * scale} for r in FEDAVG_ROWS])
        runs["autoflip", seed] = measure_run([r | {"flops_executed": r["flops_executed"] * scale} for r in AUTOFLIP_ROWS])
        runs["random", seed] = measure_run(FEDAVG_ROWS)
    for run in runs.values():
        run["run_wall_s"] = 1.0
    agg = aggregate_method(runs, "autoflip", [0, 1])
    incl = agg["reduction_vs_fedavg_pct"]["incl_exploration"]["flops_executed"]
    excl = agg["reduction_vs_fedavg_pct"]["excl_exploration"]["flops_executed"]
    assert incl["per_seed"] == {"0": pytest.approx(-48.0), "1": pytest.approx(-48.0)}  # 260 vs 500
    assert excl["mean"] == pytest.approx(-60.0) and excl["std"] == pytest.approx(0.0)  # 200 vs 500
    assert agg["final_accuracy"]["n"] == 2 and agg["final_accuracy"]["mean"] == pytest.approx(0.5)
    bytes_ = agg["reduction_vs_fedavg_pct"]["incl_exploration"]["bytes_total"]["mean"]
    assert bytes_ == pytest.approx(100 * (80 - 100) / 100)
    assert agg["accuracy_delta_points"]["fedavg"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert agg["accuracy_delta_points"]["random"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert "magnitude" not in agg["accuracy_delta_points"]

    targets = {t["target"]: t for t in check_targets({"autoflip": agg})}
    assert targets["AutoFLIP accuracy >= FedAvg - 0.5 points"]["met"] is True
    assert targets["AutoFLIP accuracy >= magnitude pruning at its sparsity"]["met"] is None  # not run
    assert targets["executed FLOPs incl. exploration <= -35 %"]["met"] is True
    assert targets["effective FLOPs incl. exploration <= -55 %"]["met"] is False
    assert all(t["met"] is None for t in check_targets({}))


def test_rounds_fill_the_budget_and_seeds_give_way_below_ten_rounds():
    methods = ["fedavg", "autoflip", "random"]
    # 3 seeds x (3 methods x R rounds + 2 rounds of exploration) x 1 s <= 100 s  ->  R = 10
    assert choose_rounds(100, 1.0, 2.0, methods, 3, max_rounds=40) == (10, 3)
    assert choose_rounds(1000, 1.0, 2.0, methods, 3, max_rounds=40) == (40, 3)
    assert choose_rounds(70, 1.0, 2.0, methods, 3, max_rounds=40) == (11, 2)
    assert choose_rounds(5, 1.0, 2.0, methods, 3, max_rounds=40) == (3, 1)  # never fewer than the last-3 mean needs


def test_method_order_puts_fedavg_then_autoflip_first():
    assert order_methods(["magnitude", "autoflip"]) == ["fedavg", "autoflip", "magnitude"]
    assert order_methods(None)[:2] == ["fedavg", "autoflip"]
    with pytest.raises(ConfigError, match="fedprox"):
        order_methods(["fedprox"])


def _parse(argv):
    parser = argparse.ArgumentParser(prog="raysim")
    add_bench_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.fixture
def tiny_base(tmp_path):
    base = {
        "name": "tiny", "seed": 0, "rounds": 2,
        "data": {"dataset": "synthetic", "num_clients": 12, "partition": {"scheme": "natural"}},
        "model": {"name": "mlp", "hidden": 16, "layers": 1},
        "clients": {"per_round": 4, "local_epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.05}},
        "algorithm": {"pruning": {"explore_fraction": 0.5, "explore_epochs": 1}},
        "eval": {"every": 1, "clients": False},
        "backend": {"name": "inprocess"},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def _rows(run_dir):
    return pq.read_table(Path(run_dir) / "rounds.parquet").to_pylist()


def test_tiny_benchmark_writes_comparison_from_the_runs_rows(tmp_path, tiny_base, capsys):
    out = tmp_path / "bench"
    methods = ["fedavg", "autoflip", "random", "magnitude"]
    args = _parse(["bench", "savings", "--budget-minutes", "10", "--seeds", "0", "1", "--methods", *methods,
                   "--out", str(out), "--config", str(tiny_base)])
    assert bench_main(args) == 0

    result = json.loads((out / "comparison.json").read_text())
    assert result["methods"] == methods and result["seeds"] == [0, 1] and result["rounds"] == 2
    assert result["plan"]["rounds_from"] == "budget" and (out / "calibration").is_dir()
    assert "--config" in result["command"] and result["base_config"]["model"]["name"] == "mlp"
    assert {"final_accuracy", "reduction_pct", "totals"} <= set(result["how_measured"])
    assert len(result["runs"]) == len(methods) * 2
    runs = {(r["method"], r["seed"]): r for r in result["runs"]}
    assert runs["random", 0]["pruning_sparsity"] == pytest.approx(1 - runs["autoflip", 0]["final_param_density"])
    assert runs["magnitude", 1]["pruning_sparsity"] == pytest.approx(1 - runs["autoflip", 1]["final_param_density"])

    # Recompute one reduction and one accuracy straight from rounds.parquet.
    fedavg, random_ = _rows(runs["fedavg", 1]["run_dir"]), _rows(runs["random", 1]["run_dir"])
    sent = lambda rows: sum(r["bytes_down"] + r["bytes_up"] for r in rows)  # noqa: E731
    expected = 100 * (sent(random_) - sent(fedavg)) / sent(fedavg)
    reduction = result["per_method"]["random"]["reduction_vs_fedavg_pct"]["incl_exploration"]["bytes_total"]
    assert reduction["per_seed"]["1"] == pytest.approx(expected) and expected < 0
    autoflip = _rows(runs["autoflip", 1]["run_dir"])
    assert autoflip[0]["phase"] == "explore" and all(r["phase"] == "train" for r in autoflip[1:])
    flops = lambda rows: sum(r["flops_executed"] for r in rows)  # noqa: E731
    excl = result["per_method"]["autoflip"]["reduction_vs_fedavg_pct"]["excl_exploration"]["flops_executed"]
    assert excl["per_seed"]["1"] == pytest.approx(100 * (flops(autoflip[1:]) - flops(fedavg)) / flops(fedavg))
    assert result["per_method"]["fedavg"]["final_accuracy"]["max"] >= runs["fedavg", 1]["final_accuracy"]
    assert runs["fedavg", 1]["final_accuracy"] == pytest.approx(
        sum(r["accuracy"] for r in fedavg) / len(fedavg))  # 2 evaluations: both in the last-3 mean

    for name in ("comparison.md", "accuracy_vs_round.png", "accuracy_vs_flops.png", "accuracy_vs_bytes.png"):
        assert (out / name).stat().st_size > 0
    assert "| random |" in (out / "comparison.md").read_text()
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert "bytes (down+up) incl. exploration" in lines[-1] and "met)" in lines[-1]  # the targets come last


def test_refuses_a_non_empty_out_before_any_work(tmp_path, tiny_base):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    with pytest.raises(ConfigError, match="never overwrites"):
        bench_main(_parse(["bench", "savings", "--out", str(out), "--config", str(tiny_base)]))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
