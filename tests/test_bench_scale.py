"""Benchmark C: the targets on hand-made points (missing rounds are never judged), then a
tiny real run, its cohort in a driver process of its own as the benchmark runs it."""
import json

import pytest

from conftest import assert_committed_result_renders
from raysim.benchmarks.scale_cli import run_scale
from raysim.benchmarks.scale_plan import SCENARIOS
from raysim.benchmarks.scale_report import markdown, targets

MIB = 2**20


def _point(cohort, peak_mib, round_s=(1.0, 1.2), setup_s=2.0):
    return {"cohort": cohort, "round_s": list(round_s), "round_s_median": sorted(round_s)[len(round_s) // 2] if round_s else None,
            "driver_peak_rss_rounds_bytes": peak_mib * MIB, "setup_s": setup_s, "setup_rss_increase_bytes": 100 * MIB}


def test_targets_are_judged_on_complete_measurements():
    ts = targets({"logreg": {"points": [_point(10_000, 500), _point(100_000, 550, round_s=(30.0, 31.0))]}},
                 asked_rounds=2)
    assert [t["verdict"] for t in ts] == ["met", "met", "met"]
    assert ts[0]["value"] == "+10.0%" and ts[1]["value"] == "31.0 s"
    assert "a 100,000-client round <= 60 s" in ts[1]["name"] and "<= 60 s and <= 4 GiB" in ts[2]["name"]
    grew = targets({"logreg": {"points": [_point(10_000, 500), _point(100_000, 700)]}}, asked_rounds=2)[0]
    assert (grew["met"], grew["verdict"]) == (False, "NOT met")
    slow = targets({"logreg": {"points": [_point(10_000, 500), _point(100_000, 520, round_s=(69.0, 70.0),
                                                                        setup_s=61.0)]}}, asked_rounds=2)
    assert [t["verdict"] for t in slow] == ["met", "NOT met", "NOT met"]
    # A 10,000-client round is not the 100,000-client target: no round verdict without that cohort.
    assert len(targets({"logreg": {"points": [_point(1_000, 500), _point(10_000, 500)]}}, asked_rounds=2)) == 2


def test_a_point_with_rounds_missing_leaves_its_targets_unjudged():
    ts = targets({"logreg": {"points": [_point(10_000, 500), _point(100_000, 520, round_s=(30.0,))]}}, asked_rounds=2)
    growth, big_round, setup = ts
    assert growth["met"] is None and "100,000 clients: 1 measured rounds of the 2 asked for" in growth["not_judged_because"]
    assert big_round["met"] is None and big_round["verdict"] == "not judged"
    assert setup["met"] is True  # set-up is measured before any round
    only = targets({"mlp": {"points": [_point(250, 500)]}}, asked_rounds=2)[0]
    assert only["met"] is None and "one cohort only" in only["not_judged_because"]
    warmup_only = targets({"mlp": {"points": [_point(250, 500), _point(500, 500, round_s=())]}}, asked_rounds=2)[0]
    assert "500 clients: no measured round, a warm-up only" in warmup_only["not_judged_because"]
    text = markdown({"command": "c", "cores": 2, "population": 10, "scenarios": {}, "targets": ts, "how_measured": {}})
    assert "(not judged: 100,000 clients: 1 measured rounds of the 2 asked for)" in text


def test_a_tiny_real_run_measures_a_cohort_in_its_own_driver(tmp_path, monkeypatch, capsys):
    # One cohort keeps it to one child driver (its own local Ray); growth then needs a second.
    monkeypatch.setitem(SCENARIOS, "logreg", ({"name": "logreg"}, (30,)))
    result = run_scale(tmp_path / "c", ["logreg"], population=200, rounds=1, seed=0, stretch_population=500)
    (point,) = result["scenarios"]["logreg"]["points"]
    assert point["cohort"] == 30 and point["population"] == 200 and len(point["round_s"]) == 1
    assert point["driver_peak_rss_rounds_bytes"] >= point["driver_rss_before_rounds_bytes"] > 0
    growth, setup = result["targets"]
    assert growth["verdict"] == "not judged" and "one cohort only" in growth["not_judged_because"]
    assert setup["verdict"] in ("met", "NOT met")
    saved = json.loads((tmp_path / "c" / "scale.json").read_text())
    assert saved["targets"] == result["targets"] and saved["measured_rounds_asked"] == 1
    assert (tmp_path / "c" / "scale_memory.png").stat().st_size > 0
    assert "not judged: one cohort only" in " ".join(capsys.readouterr().out.split())
    # The stretch point: set-up and one round's sampling of a larger population, no training.
    stretch = saved["stretch"]
    assert stretch["population"] == 500 and stretch["cohort"] == 500 and stretch["sampled"] == stretch["online"] < 500
    assert stretch["setup_s"] > 0 and stretch["sample_s"] > 0 and stretch["driver_maxrss_process_bytes"] > 0
    md = (tmp_path / "c" / "scale.md").read_text()
    assert "Stretch (no target): 500 clients set up in" in md and "--stretch-population 500" in md
    assert "not resident" in md


def test_refuses_a_population_smaller_than_a_cohort(tmp_path):
    from raysim.config import ConfigError

    with pytest.raises(ConfigError, match="population"):
        run_scale(tmp_path / "c", ["logreg"], population=100, rounds=1, seed=0)
    assert not (tmp_path / "c").exists()


def test_the_committed_result_and_the_readme_table_come_from_the_json():
    assert_committed_result_renders("scale", "scale", markdown)
