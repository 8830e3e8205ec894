"""The round loop end to end in one process: reproducibility, resume, costs, failures, deadlines."""
import struct

import pyarrow.parquet as pq
import pytest
import torch

from conftest import MIXED_DEVICES, crashed_run, plan_round
from raysim.algorithms.fedavg import FedAvg
from raysim.algorithms.server_update import MOMENTUM_PREFIX
from raysim.data.loading import load_federated_dataset
from raysim.devices import Population
from raysim.engine.clock import ClockPredictor
from raysim.engine.runner import ClientRunner
from raysim.experiment import execute, model_factory, new_run
from raysim.results.checkpoint import latest_checkpoint, load_checkpoint

VOLATILE = {"wall_time_s", "client_train_wall_s"}


def _run(cfg):
    run_dir = new_run(cfg)
    summary = execute(cfg, run_dir)
    state = load_checkpoint(latest_checkpoint(run_dir))
    rows = pq.read_table(run_dir / "rounds.parquet").to_pylist()
    return run_dir, summary, state, rows


def _stable(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def test_same_seed_is_bit_identical_and_other_seed_differs(small_config):
    _, _, a, rows_a = _run(small_config())
    _, _, b, rows_b = _run(small_config())
    _, _, c, _ = _run(small_config(seed=4))
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert _stable(rows_a) == _stable(rows_b)
    assert not all(torch.equal(a.weights[k], c.weights[k]) for k in a.weights)


def test_run_folder_contents_and_no_overwrite(small_config):
    cfg = small_config()
    d1, summary, state, rows = _run(cfg)
    d2, *_ = _run(cfg)
    assert d1 != d2
    assert {p.name for p in d1.iterdir()} >= {"config.yaml", "rounds.parquet", "summary.json", "checkpoints"}
    assert [r["round"] for r in rows] == [1, 2, 3] and state.round == 3
    needed = {"round", "accuracy", "loss", "flops_executed", "flops_effective", "bytes_down", "bytes_up",
              "sim_time_s", "wall_time_s", "clients_done", "clients_dropped", "clients_failed"}
    assert needed <= set(rows[0])
    assert summary["rounds"] == 3 and summary["final_accuracy"] == rows[-1]["accuracy"]
    assert all(r["sim_time_s"] > 0 and r["clients_done"] == 4 for r in rows)


def test_resume_reaches_the_same_model(small_config, monkeypatch):
    cfg = small_config(rounds=4, output={"checkpoint_every": 2})
    _, _, full, full_rows = _run(cfg)

    crashed = crashed_run(cfg, monkeypatch, crash_round=3)
    assert load_checkpoint(latest_checkpoint(crashed)).round == 2

    execute(cfg, crashed, resume=True)
    resumed = load_checkpoint(latest_checkpoint(crashed))
    assert resumed.round == 4
    # Server momentum is on (the shared hard case): the resumed run must carry it over.
    assert any(k.startswith(MOMENTUM_PREFIX) for k in full.buffers) and resumed.buffers.keys() == full.buffers.keys()
    assert all(torch.equal(full.buffers[k], resumed.buffers[k]) for k in full.buffers)
    assert all(torch.equal(full.weights[k], resumed.weights[k]) for k in full.weights)
    assert _stable(pq.read_table(crashed / "rounds.parquet").to_pylist()) == _stable(full_rows)


def _safetensors_data_bytes(payload: bytes) -> int:
    (header_len,) = struct.unpack("<Q", payload[:8])
    return len(payload) - 8 - header_len


def test_fedavg_dense_costs_match_analytic_counts(small_config):
    cfg = small_config(rounds=1, eval={"clients": False})
    ds = load_federated_dataset(cfg.data, cfg.seed)
    d, c = ds.input_shape[0], ds.num_classes
    n_params = d * c + c
    algo = FedAvg(cfg)
    factory = model_factory(cfg, ds.input_shape, ds.num_classes, torch.from_numpy(ds.train.x[:1]))
    state = algo.init_state(factory(None).state_dict())
    plan = algo.configure_round(state, 0, [0, 1, 2])
    assert _safetensors_data_bytes(algo.encode(plan.broadcast.weights, {}, include_mask=True)) == 4 * n_params
    assert plan.broadcast.payload_bytes == len(algo.encode(plan.broadcast.weights, {}, include_mask=True))
    runner = ClientRunner(algo, ds, Population.from_mix(ds.num_clients, {"laptop": 1}, 0), factory)
    partial = runner.run(plan.tasks, plan.broadcast)
    t = partial.train
    examples = sum(len(ds.client_train_rows(k)) for k in (0, 1, 2)) * cfg.clients.local_epochs
    assert t.examples == examples
    # logreg: forward 2dc, weight gradient 2dc; the input needs no gradient.
    assert t.flops_executed == pytest.approx(4 * d * c * examples)
    assert t.flops_effective == t.flops_executed
    assert t.bytes_down == 3 * plan.broadcast.payload_bytes
    assert t.bytes_up == 3 * plan.broadcast.payload_bytes  # the delta has the model's shape


def test_a_layer_frozen_between_clients_is_charged_without_its_weight_gradient(small_config, monkeypatch):
    """The runner remembers FLOP profiles per model, keyed by trainability too: a client after
    an algorithm froze a layer of the runner's model pays no weight-gradient FLOPs for it."""
    cfg = small_config(rounds=1, model={"name": "mlp", "hidden": 16, "layers": 1})
    ds = load_federated_dataset(cfg.data, cfg.seed)
    algo = FedAvg(cfg)
    factory = model_factory(cfg, ds.input_shape, ds.num_classes, torch.from_numpy(ds.train.x[:1]))
    runner = ClientRunner(algo, ds, Population.from_mix(ds.num_clients, {"laptop": 1}, 0), factory)
    plan = algo.configure_round(algo.init_state(factory(None).state_dict()), 0, [0, 1])
    per_example = []
    for task in plan.tasks:
        t = runner.run([task], plan.broadcast).train
        per_example.append(t.flops_executed / t.examples)
        runner.model_for(plan.broadcast).get_parameter("classifier.weight").requires_grad_(False)
    first = runner.model_for(plan.broadcast).get_parameter("classifier.weight")
    assert per_example[1] == pytest.approx(per_example[0] - 2 * first.numel())


def test_failing_and_non_finite_clients_are_excluded_and_counted(small_config, monkeypatch):
    cfg = small_config(rounds=1)
    ds = load_federated_dataset(cfg.data, cfg.seed)
    algo = FedAvg(cfg)
    factory = model_factory(cfg, ds.input_shape, ds.num_classes, torch.from_numpy(ds.train.x[:1]))
    state = algo.init_state(factory(None).state_dict())
    runner = ClientRunner(algo, ds, Population.from_mix(ds.num_clients, {"laptop": 1}, 0), factory)
    plan = algo.configure_round(state, 0, [0, 1, 2, 3])
    clean = runner.run([t for t in plan.tasks if t.client in (0, 3)], plan.broadcast)

    real = FedAvg.client_update

    def flaky(self, model, data, task, broadcast):
        if task.client == 1:
            raise RuntimeError("device crashed")
        update = real(self, model, data, task, broadcast)
        if task.client == 2:
            total = update.contribution["delta"].total
            next(iter(total.values())).view(-1)[0] = float("nan")
        return update

    monkeypatch.setattr(FedAvg, "client_update", flaky)
    mixed = runner.run(plan.tasks, plan.broadcast)
    assert mixed.train.done == 2 and mixed.train.failed == 2
    assert sorted(f.client for f in mixed.failures) == [1, 2]
    assert "device crashed" in mixed.failures[0].reason and "non-finite" in mixed.failures[1].reason
    assert mixed.stats["delta"].weight == clean.stats["delta"].weight
    assert all(torch.equal(mixed.stats["delta"].total[k], clean.stats["delta"].total[k]) for k in clean.stats["delta"].total)


def test_deadline_drops_stragglers_and_round_lasts_the_deadline(small_config):
    cfg = small_config(rounds=2, devices={"mix": {"phone_low": 1.0}, "deadline_s": 1e-6})
    run_dir, summary, state, rows = _run(cfg)
    assert all(r["clients_dropped"] == r["clients_sampled"] and r["clients_done"] == 0 for r in rows)
    assert all(r["sim_time_s"] == 1e-6 for r in rows)
    ds = load_federated_dataset(cfg.data, cfg.seed)
    init = model_factory(cfg, ds.input_shape, ds.num_classes, torch.from_numpy(ds.train.x[:1]))(None)
    assert all(torch.equal(v, state.weights[k]) for k, v in init.state_dict().items())  # nothing aggregated


def _mixed_devices_round(small_config):
    """Six FedAvg clients on slow and fast devices: (dataset, population, model factory, runner, plan)."""
    rnd = plan_round(small_config(rounds=1, devices=MIXED_DEVICES), 0, list(range(6)))
    return rnd.dataset, rnd.population, rnd.runner.model_factory, rnd.runner, rnd.plan


def test_sim_time_is_the_slowest_client_without_deadline(small_config):
    _, _, _, runner, plan = _mixed_devices_round(small_config)
    times = [runner.run([t], plan.broadcast).train.sim_time_s for t in plan.tasks]
    assert runner.run(plan.tasks, plan.broadcast).train.sim_time_s == max(times)
    assert len(set(times)) > 1


def test_overcommit_closes_the_round_at_the_cohort_th_fastest_predicted_client(small_config):
    cohort = 4
    cfg = small_config(rounds=2, data={"num_clients": 24}, clients={"per_round": cohort},
                       devices={"mix": {"phone_low": 0.5, "laptop": 0.5}, "use_availability": False, "overcommit": 2.0})
    _, _, _, rows = _run(cfg)
    for r in rows:
        assert r["clients_sampled"] == 2 * cohort
        # At least the cohort reports (clients tied with the cohort-th fastest are kept too:
        # many synthetic clients have the same size and profile); the slowest are dropped.
        assert cohort <= r["clients_done"] < r["clients_sampled"]
        assert r["clients_done"] + r["clients_dropped"] == r["clients_sampled"] and r["clients_failed"] == 0
    no_overcommit = _run(small_config(rounds=2, data={"num_clients": 24}, clients={"per_round": cohort},
                                      devices={"mix": {"phone_low": 0.5, "laptop": 0.5}, "use_availability": False}))[3]
    assert all(r["clients_sampled"] == r["clients_done"] == cohort for r in no_overcommit)


def test_clock_predictor_matches_the_runners_simulated_time_for_dense_fedavg(small_config):
    ds, pop, factory, runner, plan = _mixed_devices_round(small_config)
    actual = [runner.run([t], plan.broadcast).train.sim_time_s for t in plan.tasks]
    predicted = ClockPredictor(ds, pop, factory).predict_s(plan.tasks, plan.broadcast)
    assert predicted == pytest.approx(actual, rel=1e-3)
    deadline = ClockPredictor(ds, pop, factory).round_deadline(plan.tasks, plan.broadcast, 2, None)
    assert deadline == pytest.approx(sorted(actual)[1], rel=1e-3)
