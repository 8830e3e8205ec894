"""What the system computes, checked against numbers worked out here by hand.

The other end-to-end tests compare the system with itself (Ray against in-process, a
rerun, a resumed run); a mistake made the same way on both sides passes them. These
recompute the expected values independently: local SGD written out with autograd,
the sample-weighted mean and the server step in float64, FLOPs from the layer shapes,
simulated time from the device profile's numbers, robust normalisation with
torch.quantile. Each also checks that the mistake it guards against would move the
number it pins (a test that cannot fail is no test).
"""

import math
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from conftest import MIXED_DEVICES, algorithm_parts, explored, plan_round
from raysim.algorithms.server_update import MOMENTUM_PREFIX
from raysim.costs.payload import encode_masked
from raysim.data.loading import load_federated_dataset
from raysim.devices import Population
from raysim.engine.clock import ClockPredictor
from raysim.engine.seeds import derive_seed, rng_for
from raysim.experiment import execute, model_factory, new_run
from raysim.results.checkpoint import latest_checkpoint, load_checkpoint

D, C = 60, 10  # the synthetic federation: 60 features, 10 classes
LOGREG_FLOPS_PER_EXAMPLE = 4 * D * C  # forward 2dc + weight gradient 2dc; the input needs no gradient


def hand_sgd(weight, bias, x, y, *, seed, epochs, batch_size, lr, momentum):
    """The client's local training written out: a fresh torch.Generator(seed) draws one
    permutation per epoch; heavy-ball SGD (v <- m v + g, first v = g; w <- w - lr v).
    Returns (delta W, delta b, mean loss of the last epoch)."""
    gen = torch.Generator().manual_seed(seed)
    w, b = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    vw = vb = None
    n = len(y)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(F.linear(x[idx], w, b), y[idx])
            gw, gb = torch.autograd.grad(loss, (w, b))
            vw = gw if vw is None else momentum * vw + gw
            vb = gb if vb is None else momentum * vb + gb
            with torch.no_grad():
                w -= lr * vw
                b -= lr * vb
            total += loss.item() * len(idx)
        last_loss = total / n
    return (w.detach() - weight).double(), (b.detach() - bias).double(), last_loss


def _hand_eval(w, b, x, y):
    """(mean loss, accuracy) of the logistic regression (w, b) on (x, y)."""
    logits = F.linear(x, w.float(), b.float())
    return float(F.cross_entropy(logits, y)), int((logits.argmax(1) == y).sum()) / len(y)


def test_two_fedavg_rounds_equal_the_hand_computed_sample_weighted_server_steps(small_config):
    """Every client of unequal size (14 to 720 rows) takes part, for two local epochs with
    momentum and a decaying lr; the server applies the sample-weighted mean delta with server
    momentum and a server lr. The final weights, the server momentum and every logged number
    of each round (losses, accuracies, FLOPs, bytes, simulated time) must be the hand-computed ones."""
    cfg = small_config(rounds=2, clients={"per_round": 12}, devices={"use_availability": False})
    run_dir = new_run(cfg)
    execute(cfg, run_dir)
    got = load_checkpoint(latest_checkpoint(run_dir))
    rows = pq.read_table(run_dir / "rounds.parquet").to_pylist()

    ds = load_federated_dataset(cfg.data, cfg.seed)
    init = model_factory(cfg, ds.input_shape, ds.num_classes, torch.from_numpy(ds.train.x[:1]))(None).state_dict()
    population = Population.from_mix(ds.num_clients, cfg.devices.mix, derive_seed(cfg.seed, "population"))
    payload = len(encode_masked(init, {}))  # dense FedAvg: the same size each way
    test_x, test_y = torch.from_numpy(ds.test.x), torch.from_numpy(ds.test.y)
    with_holdout = [k for k in range(ds.num_clients) if ds.holdout_counts[k] > 0]
    eval_clients = sorted(int(k) for k in rng_for(cfg.seed, "eval").permutation(with_holdout)[:cfg.eval.max_clients])
    holdout = [ds.client_holdout_rows(k) for k in eval_clients]
    holdout_x, holdout_y = (torch.from_numpy(ds.train.x[np.concatenate(holdout)]),
                            torch.from_numpy(ds.train.y[np.concatenate(holdout)]))
    c, a = cfg.clients, cfg.algorithm
    sizes = [len(ds.client_train_rows(k)) for k in range(ds.num_clients)]
    assert min(sizes) < 20 and max(sizes) > 500  # the case that tells weighted from unweighted means
    w, b = init["classifier.weight"].double(), init["classifier.bias"].double()
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    for r in range(2):
        deltas, losses = [], []
        for k in range(ds.num_clients):
            rows_k = ds.client_train_rows(k)
            x, y = torch.from_numpy(ds.train.x[rows_k]), torch.from_numpy(ds.train.y[rows_k])
            dw, db, loss = hand_sgd(w.float(), b.float(), x, y, seed=derive_seed(cfg.seed, "client", r, k),
                                    epochs=c.local_epochs, batch_size=c.batch_size, lr=c.optimizer.lr * c.lr_decay**r,
                                    momentum=c.optimizer.momentum)
            deltas.append((dw, db))
            losses.append(loss)
        n = sum(sizes)
        mean_w = sum(s * d[0] for s, d in zip(sizes, deltas)) / n
        mean_b = sum(s * d[1] for s, d in zip(sizes, deltas)) / n
        equal_w = sum(d[0] for d in deltas) / len(deltas)
        assert (mean_w - equal_w).abs().max() > 1e-2  # equal weighting would be caught
        vw, vb = a.server_momentum * vw + mean_w, a.server_momentum * vb + mean_b
        w, b = w + a.server_lr * vw, b + a.server_lr * vb

        row = rows[r]
        assert (row["round"], row["phase"], row["clients_sampled"], row["clients_done"], row["clients_dropped"],
                row["clients_failed"]) == (r + 1, "train", 12, 12, 0, 0)
        assert row["train_loss"] == pytest.approx(sum(s * loss for s, loss in zip(sizes, losses)) / n, rel=1e-5)
        flops = [LOGREG_FLOPS_PER_EXAMPLE * s * c.local_epochs for s in sizes]
        assert row["flops_executed"] == row["flops_effective"] == pytest.approx(sum(flops), rel=1e-12)
        assert row["bytes_down"] == row["bytes_up"] == 12 * payload
        times = [f / p.flops_per_s + 8 * payload / p.down_bps + 8 * payload / p.up_bps + p.latency_s
                 for f, p in zip(flops, map(population.profile, range(ds.num_clients)))]
        assert row["sim_time_s"] == pytest.approx(max(times), rel=1e-12)
        loss, accuracy = _hand_eval(w, b, test_x, test_y)
        assert row["loss"] == pytest.approx(loss, rel=1e-4) and row["accuracy"] == pytest.approx(accuracy, abs=1e-9)
        loss, accuracy = _hand_eval(w, b, holdout_x, holdout_y)
        assert row["client_loss"] == pytest.approx(loss, rel=1e-4)
        assert row["client_accuracy"] == pytest.approx(accuracy, abs=1e-9)

    torch.testing.assert_close(got.weights["classifier.weight"].double(), w, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.weights["classifier.bias"].double(), b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.buffers[MOMENTUM_PREFIX + "classifier.weight"].double(), vw, rtol=1e-4, atol=1e-5)
    assert (w - init["classifier.weight"].double()).abs().max() > 1e-2  # training really moved the model
    assert 0.2 < rows[-1]["accuracy"] < 1  # and the accuracies pinned are not degenerate


def test_masked_round_costs_and_clock_with_several_epochs(masked_round):
    """Per client, in a masked round on mixed devices with two local epochs: executed FLOPs are
    the dense count times the examples processed (epochs x samples), effective FLOPs scale the
    masked layer by its density, the download (weights plus mask) and the upload (kept entries)
    differ, and the simulated time is the profile's arithmetic on exactly those numbers."""
    rnd = masked_round
    epochs = rnd.cfg.clients.local_epochs
    assert epochs > 1
    mask = rnd.plan.broadcast.masks["classifier.weight"]
    density = float(mask.float().mean())
    assert density == pytest.approx(0.4)
    down = rnd.plan.broadcast.payload_bytes
    seen_profiles = set()
    for task in rnd.plan.tasks:
        t = rnd.runner.run([task], rnd.plan.broadcast).train
        samples = len(rnd.dataset.client_train_rows(task.client))
        assert t.examples == samples * epochs
        assert t.flops_executed == pytest.approx(LOGREG_FLOPS_PER_EXAMPLE * samples * epochs, rel=1e-12)
        assert t.flops_effective == pytest.approx(
            LOGREG_FLOPS_PER_EXAMPLE * density * samples * epochs, rel=1e-12)
        up = t.bytes_up
        assert t.bytes_down == down and up < down - 100  # the mask rides only the download
        p = rnd.population.profile(task.client)
        seen_profiles.add(p.name)
        want = (LOGREG_FLOPS_PER_EXAMPLE * samples * epochs / p.flops_per_s + 8 * down / p.down_bps
                + 8 * up / p.up_bps + p.latency_s)
        assert t.sim_time_s == pytest.approx(want, rel=1e-12)
        swapped = want - 8 * up / p.up_bps + 8 * up / p.down_bps  # download timed from the upload's bytes
        assert abs(swapped - want) > 1e-6 * want
    assert len(seen_profiles) > 1


def test_masked_upload_carries_only_kept_entries(masked_round):
    rnd = masked_round
    mask = rnd.plan.broadcast.masks["classifier.weight"]
    partial = rnd.runner.run(rnd.plan.tasks, rnd.plan.broadcast)
    delta = partial.stats["delta"].mean()["classifier.weight"]
    assert not bool(delta[~mask].any()) and bool(delta[mask].abs().gt(0).all())


def test_clock_predictor_scales_compute_with_local_epochs(small_config):
    """The driver's over-commit prediction, worked out by hand for a dense round with three epochs."""
    rnd = plan_round(small_config(clients={"local_epochs": 3}, devices=MIXED_DEVICES), 0, [0, 1, 2, 10])
    predictor = ClockPredictor(rnd.dataset, rnd.population, rnd.runner.model_factory)
    payload = rnd.plan.broadcast.payload_bytes
    want = []
    for task in rnd.plan.tasks:
        p = rnd.population.profile(task.client)
        flops = LOGREG_FLOPS_PER_EXAMPLE * len(rnd.dataset.client_train_rows(task.client)) * 3
        want.append(flops / p.flops_per_s + 8 * payload / p.down_bps + 8 * payload / p.up_bps + p.latency_s)
    assert predictor.predict_s(rnd.plan.tasks, rnd.plan.broadcast).tolist() == pytest.approx(want, rel=1e-9)
    actual = [rnd.runner.run([t], rnd.plan.broadcast).train.sim_time_s for t in rnd.plan.tasks]
    assert actual == pytest.approx(want, rel=1e-9)  # dense: the upload is as large as the download


def test_a_clients_shuffles_change_with_the_round(small_config):
    """The same client from the same weights at the same lr: round 1 and round 2 draw different
    batches (the seed derives from the round), while the same round repeats exactly."""
    cfg = small_config(clients={"lr_decay": 1.0})
    big = 1  # 720 rows: many batches, so the order matters
    first, second = plan_round(cfg, 0, [big]), plan_round(cfg, 1, [big])
    assert first.plan.tasks[0].lr == second.plan.tasks[0].lr
    assert first.plan.tasks[0].seed != second.plan.tasks[0].seed

    def delta(rnd):
        return rnd.runner.run(rnd.plan.tasks, rnd.plan.broadcast).stats["delta"].mean()["classifier.weight"]

    a, b, again = delta(first), delta(second), delta(plan_round(cfg, 0, [big]))
    assert torch.equal(a, again)
    assert (a - b).abs().max() > 1e-4


def _robust(x: torch.Tensor) -> torch.Tensor:
    q25, median, q75 = torch.quantile(x.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return ((x.double() - median) / (q75 - q25)).float()


def _robust_autoflip(small_config, **pruning):
    return small_config(model={"name": "mlp", "hidden": 32},
                        algorithm={"name": "autoflip_unstructured",
                                   "pruning": {"normalise": "robust", "sparsity": 0.6, "ramp_rounds": 0,
                                               "alpha": 0.5, "explore_epochs": 1, "explore_fraction": 0.5,
                                               **pruning}})


@pytest.mark.parametrize("regrowth", ["allow", "freeze"])
def test_regrowth_freeze_keeps_pruned_coordinates_pruned_and_allow_regrows(small_config, regrowth):
    """Under robust normalisation a kept coordinate's fresh guidance can fall below a pruned one's
    0, so with `allow` some pruned coordinates come back while the sparsity ramps; `freeze` never
    lets one back. Both keep the exact count the schedule asks for."""
    ds, _, algo, runner, state = explored(_robust_autoflip(small_config, ramp_rounds=3, alpha=0.2, regrowth=regrowth))
    regrown = 0
    for r in range(3):
        before = {k: v.clone() for k, v in state.buffers.items() if k.startswith("mask/")}
        plan = algo.configure_round(state, r, [0, 1, 2, 10])
        state, metrics = algo.aggregate(state, plan, runner.run(plan.tasks, plan.broadcast))
        after = {k: v for k, v in state.buffers.items() if k.startswith("mask/")}
        regrown += sum(int((~before[k] & after[k]).sum()) for k in after)
        total = sum(m.numel() for m in after.values())
        assert sum(int((~m).sum()) for m in after.values()) == math.floor(0.6 * (r + 1) / 3 * total + 1e-9)
    assert (regrown > 0) == (regrowth == "allow")


def test_autoflip_robust_guidance_is_normalised_over_surviving_coordinates(small_config):
    """One adaptive round under robust (median / IQR) normalisation, recomputed by hand: the
    fresh guidance is each client's squared update, sample-weighted, normalised per tensor over
    the coordinates the mask kept (pruned ones score 0), then blended into the running guidance."""
    cfg = _robust_autoflip(small_config)
    ds, _, algo, runner, state = explored(cfg)
    masks = {k.removeprefix("mask/"): v for k, v in state.buffers.items() if k.startswith("mask/")}
    old = {k.removeprefix("guidance/"): v for k, v in state.buffers.items() if k.startswith("guidance/")}
    assert masks.keys() == old.keys() and all(0 < int((~m).sum()) < m.numel() for m in masks.values())

    plan = algo.configure_round(state, 0, [0, 1, 2, 10])
    per_client = [runner.run([t], plan.broadcast) for t in plan.tasks]
    sizes = [len(ds.client_train_rows(t.client)) for t in plan.tasks]
    new_state, _ = algo.aggregate(state, plan, runner.run(plan.tasks, plan.broadcast))
    got = {k.removeprefix("guidance/"): v for k, v in new_state.buffers.items() if k.startswith("guidance/")}

    for name, kept in masks.items():
        # each client's squared delta, sample-weighted over the clients
        sq = sum(n * p.stats["delta"].mean(torch.float64)[name] ** 2 for n, p in zip(sizes, per_client)) / sum(sizes)
        fresh = torch.zeros(kept.shape)
        fresh[kept] = _robust(sq[kept])
        want = 0.5 * old[name] + 0.5 * fresh
        torch.testing.assert_close(got[name], want, rtol=1e-4, atol=1e-5)
        everywhere = 0.5 * old[name] + 0.5 * _robust(sq)  # normalised with the pruned zeros included
        assert (everywhere - want).abs().max() > 1e-2


def mlp_training_flops(widths: list[int]) -> int:
    """Per-example training FLOPs of an MLP with these layer widths (input first, classes
    last): forward 2 * fan_in * fan_out per layer, a weight gradient as large, and an input
    gradient as large for every layer but the first (its input is data)."""
    layers = list(zip(widths[:-1], widths[1:]))
    return sum((4 if i == 0 else 6) * fan_in * fan_out for i, (fan_in, fan_out) in enumerate(layers))


def test_clock_predictor_bills_the_pruned_architecture_it_is_given(small_config):
    """After structured pruning the predictor must cost the smaller model, per architecture."""
    cfg = small_config(model={"name": "mlp", "hidden": 32},
                       algorithm={"name": "autoflip_structured",
                                  "pruning": {"structured_fraction": 0.25, "explore_epochs": 1}})
    ds, _, algo, runner, state = explored(cfg)
    factory, pop = runner.model_factory, runner.population
    widths = [D, state.weights["features.1.weight"].shape[0], state.weights["features.3.weight"].shape[0], C]
    assert widths[1:3] == [24, 24]  # a quarter of 32 units removed from each hidden layer

    predictor = ClockPredictor(ds, pop, factory)
    assert predictor.flops_per_example(None) == mlp_training_flops([D, 32, 32, C]) == 15744
    assert predictor.flops_per_example(state.meta["arch"]) == mlp_training_flops(widths) == 10656
    assert predictor.flops_per_example(None) == 15744  # cached per architecture, not once for all

    plan = algo.configure_round(state, 0, [0, 10])
    for task, seconds in zip(plan.tasks, predictor.predict_s(plan.tasks, plan.broadcast)):
        p = pop.profile(task.client)
        flops = 10656 * len(ds.client_train_rows(task.client)) * cfg.clients.local_epochs
        payload = plan.broadcast.payload_bytes
        assert seconds == pytest.approx(flops / p.flops_per_s + 8 * payload / p.down_bps + 8 * payload / p.up_bps
                                        + p.latency_s, rel=1e-12)


def test_client_evaluation_sums_each_clients_held_out_rows(masked_round):
    """Client-side evaluation of the masked broadcast: loss, correct predictions and examples
    summed over clients, recomputed from the broadcast weights on each client's held-out rows."""
    rnd = masked_round
    b = rnd.plan.broadcast
    clients = [0, 1, 10]
    tasks = [type(rnd.plan.tasks[0])(1, k, 0, "evaluate") for k in clients]
    p = rnd.runner.run(tasks, b)
    t = p.evaluate
    w, bias = b.weights["classifier.weight"], b.weights["classifier.bias"]
    assert not bool(w[~b.masks["classifier.weight"]].any())  # evaluated as pruned
    loss_sum = correct = n = 0
    for k in clients:
        rows = rnd.dataset.client_holdout_rows(k)
        assert len(rows) > 0
        x, y = torch.from_numpy(rnd.dataset.train.x[rows]), torch.from_numpy(rnd.dataset.train.y[rows])
        logits = F.linear(x, w, bias)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    assert t.examples == n and t.clients == len(clients)
    assert t.correct == correct
    assert t.loss_sum == pytest.approx(loss_sum, rel=1e-6)
    assert p.train.done == 0 and p.train.flops_executed == 0  # evaluation bills no training


def test_evaluation_runs_every_k_rounds_and_after_the_last(small_config):
    cfg = small_config(rounds=5, eval={"every": 2})
    run_dir = new_run(cfg)
    execute(cfg, run_dir)
    rows = pq.read_table(run_dir / "rounds.parquet").to_pylist()
    evaluated = [r["round"] for r in rows if r.get("accuracy") is not None and not math.isnan(r["accuracy"])]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5] and evaluated == [2, 4, 5]
    assert all(math.isfinite(rows[i - 1]["client_accuracy"]) for i in evaluated)


def test_exploration_is_logged_as_round_zero_with_its_explorers(small_config):
    cfg = small_config(rounds=1, model={"name": "mlp", "hidden": 16},
                       algorithm={"name": "autoflip", "pruning": {"explore_fraction": 0.5, "explore_epochs": 1}})
    run_dir = new_run(cfg)
    start = time.perf_counter()
    execute(cfg, run_dir)
    elapsed = time.perf_counter() - start
    explore, train = pq.read_table(run_dir / "rounds.parquet").to_pylist()
    assert (explore["round"], explore["phase"], explore["clients_sampled"], explore["clients_done"]) == (0, "explore", 6, 6)
    assert (train["round"], train["phase"]) == (1, "train")
    assert 0 < explore["wall_time_s"] < elapsed and 0 < train["wall_time_s"] < elapsed
    # Clients train inside the round: their summed training time is measured and within it.
    assert 0 < explore["client_train_wall_s"] < explore["wall_time_s"] and 0 < train["client_train_wall_s"] < train["wall_time_s"]
    assert math.isfinite(explore["accuracy"])


def test_overcommit_deadline_is_the_keep_th_fastest_or_the_configured_one_if_sooner(small_config):
    rnd = plan_round(small_config(devices=MIXED_DEVICES), 0, [0, 1, 2, 3, 4, 10])
    predictor = ClockPredictor(rnd.dataset, rnd.population, rnd.runner.model_factory)
    times = sorted(predictor.predict_s(rnd.plan.tasks, rnd.plan.broadcast).tolist())
    tasks, b = rnd.plan.tasks, rnd.plan.broadcast
    assert predictor.round_deadline(tasks, b, 3, None) == times[2]
    assert predictor.round_deadline(tasks, b, 3, times[2] * 10) == times[2]  # the cut-off is sooner
    assert predictor.round_deadline(tasks, b, 3, times[0] / 2) == times[0] / 2  # the configured one is sooner
    assert predictor.round_deadline(tasks, b, 6, 123.0) == 123.0  # not over-committed: the config's deadline
    assert predictor.round_deadline(tasks, b, 6, None) is None


def _train_for(epochs, lr, patience, batch_size, n=40):
    """local_train on a fixed tiny problem; returns (examples processed, epoch losses)."""
    from raysim.config import OptimizerConfig
    from raysim.engine.api import ClientData
    from raysim.engine.training import local_train

    if lr == 0:  # identical rows: every order of the batch sums to the same float loss
        data = ClientData(torch.ones(n, 5), torch.zeros(n, dtype=torch.long))
    else:
        x = torch.randn(n, 5, generator=torch.Generator().manual_seed(0))
        data = ClientData(x, (x[:, 0] > 0).long())
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 2)
    result = local_train(model, data, epochs=epochs, batch_size=batch_size, optimizer=OptimizerConfig(lr=0.1), lr=lr,
                         seed=1, patience=patience)
    return result.examples_processed, result.epoch_losses


@pytest.mark.parametrize("patience, epochs_run", [(1, 2), (2, 3), (4, 5), (None, 6)])
def test_early_stopping_counts_epochs_without_a_lower_loss(patience, epochs_run):
    """With lr 0 the loss is the same every epoch: the first sets the best,
    and training stops once `patience` epochs in a row have not beaten it (at most 6 here)."""
    examples, losses = _train_for(6, 0.0, patience, batch_size=8)
    assert len(losses) == epochs_run and examples == 40 * epochs_run
    assert len(set(losses)) == 1


def test_early_stopping_never_stops_a_loss_that_keeps_falling():
    examples, losses = _train_for(6, 0.05, 1, batch_size=8)
    assert all(b < a for a, b in zip(losses, losses[1:])) and len(losses) == 6 and examples == 240


def test_explorers_are_distinct_clients_in_the_configured_share(small_config):
    for fraction, count in ((0.5, 6), (0.25, 3), (0.01, 1), (1.0, 12)):
        cfg = small_config(model={"name": "mlp", "hidden": 8},
                           algorithm={"name": "autoflip", "pruning": {"explore_fraction": fraction, "explore_epochs": 3}})
        _, factory, algo, _ = algorithm_parts(cfg)
        plan = algo.setup_plan(algo.init_state(factory(None).state_dict()), 12)
        clients = [t.client for t in plan.tasks]
        assert len(clients) == len(set(clients)) == count and all(0 <= c < 12 for c in clients)
        assert all((t.round, t.kind, t.epochs) == (0, "explore", 3) for t in plan.tasks)
        assert len({t.seed for t in plan.tasks}) == count
        train_seeds = {t.seed for t in algo.configure_round(algo.init_state(factory(None).state_dict()), 0, clients).tasks}
        assert train_seeds.isdisjoint(t.seed for t in plan.tasks)  # exploring is not round 1's training
