"""`ab`'s statistics and verdicts on made-up rounds: the signed-rank test against brute force, the interval,
the verdicts (timed, memory, status), the stopping rule, the schedule and the record keys."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from bench.analysis.ab.judging import POOLED_ID, judge, settled
from bench.analysis.ab.paired import paired, signed_rank_cdf
from bench.analysis.ab.rendering import render_json, render_markdown, side_differences
from bench.run.ab.schedule import round_slots
from bench.run.records import record_key
from bench.run.store import RunStore

MIB = 1 << 20


def brute_t_plus(n: int) -> list[int]:
    """Every sign assignment's T+ for ranks 1..n."""
    return [
        sum(r for r, s in zip(range(1, n + 1), signs, strict=True) if s)
        for signs in itertools.product((0, 1), repeat=n)
    ]


@pytest.mark.parametrize("n", range(1, 11))
def test_signed_rank_null_matches_enumeration(n: int) -> None:
    sums = np.array(brute_t_plus(n))
    expected = [(sums <= t).mean() for t in range(n * (n + 1) // 2 + 1)]
    assert np.allclose(signed_rank_cdf(n), expected)


def test_p_value_matches_enumeration_of_sign_flips() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        d = rng.normal(0.02, 0.03, 8)
        ranks = np.argsort(np.argsort(np.abs(d))) + 1
        observed = ranks[d > 0].sum()
        sums = np.array(brute_t_plus(8))
        expected = min(1.0, 2 * min((sums <= observed).mean(), (sums >= observed).mean()))
        assert paired(d).p == pytest.approx(expected)


def test_interval_uses_the_tabled_critical_value() -> None:
    d = np.arange(1, 11) / 100.0  # n = 10: the 95 % critical T is 8, so the interval is [W_(9), W_(47)]
    walsh = np.sort([(a + b) / 2 for a, b in itertools.combinations_with_replacement(d, 2)])
    result = paired(d)
    assert (result.low, result.high) == (pytest.approx(walsh[8]), pytest.approx(walsh[46]))
    assert result.estimate == pytest.approx(np.median(walsh))
    six = paired(np.arange(1, 7) / 100.0)  # n = 6: only the whole range reaches 95 %
    assert (six.low, six.high) == (pytest.approx(0.01), pytest.approx(0.06))
    five = paired(np.arange(1, 6) / 100.0)  # n = 5: not even the whole range does
    assert (five.low, five.high) == (-math.inf, math.inf)
    assert paired(np.arange(1, 6) / 100.0, level=0.90).high == pytest.approx(0.05)


def test_interval_covers_a_known_shift_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    hits = sum(
        r.low <= 0.1 <= r.high for r in (paired(0.1 + rng.standard_t(4, 12) * 0.02) for _ in range(400))
    )
    assert 0.92 <= hits / 400 <= 0.995


# -- verdicts over made-up records -------------------------------------------------------------------------


def records(
    rounds: int,
    ratio: float = 1.0,
    noise: float = 0.01,
    *,
    memory_ratio: float = 1.0,
    cells: int = 2,
    seed: int = 0,
    new_status: str = "ok",
) -> list[dict]:
    """Both sides' records of `cells` cells over `rounds` rounds; new's timings are `ratio` x base's."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(cells):
        for r in range(1, rounds + 1):
            machine = math.exp(rng.normal(0, 0.2))  # the machine's speed this round: shared by both sides
            for side, factor in (("base", 1.0), ("new", ratio)):
                latency = 0.002 * machine * factor * math.exp(rng.normal(0, noise))
                rec = {
                    "cell_id": f"cell{c}",
                    "label": f"float32/none/sdpa/no-ckpt/cache-auto/{c}",
                    "status": "ok",
                    "side": side,
                    "ab.round": r,
                    "prefill.latency_s": latency,
                    "prefill.latency_s.samples": [latency],
                    "prefill.tokens_per_s": 128 / latency,
                    "prefill.tokens_per_s.samples": [128 / latency],
                    "mem.prefill.rss_bytes": 300 * MIB * (memory_ratio if side == "new" else 1.0),
                    "mem.prefill.nvml_device_bytes": None,
                }
                if side == "new" and new_status != "ok" and r == 2:
                    rec = {**rec, "status": new_status, "reason": "boom | here"}
                out.append(rec)
    return out


def test_identical_sides_on_a_wandering_machine_change_nothing() -> None:
    j = judge(records(10, seed=1))
    assert not j.regressed and not j.improvements
    assert {r.verdict for r in j.results} == {"no change"}
    assert all(r.metric != "mem.prefill.nvml_device_bytes" for r in j.results)  # never measured: left out


def test_a_ten_percent_slowdown_is_a_regression_in_both_directions_of_better() -> None:
    j = judge(records(10, ratio=1.10, seed=2))
    verdicts = {(r.cell_id, r.metric): r for r in j.results}
    for cell in ("cell0", "cell1"):
        latency, rate = verdicts[(cell, "prefill.latency_s")], verdicts[(cell, "prefill.tokens_per_s")]
        assert latency.verdict == rate.verdict == "regression"
        assert latency.ratio == pytest.approx(1.10, rel=0.02) and rate.ratio == pytest.approx(
            1 / 1.10, rel=0.02
        )
        assert latency.low < 1.10 < latency.high
    assert j.regressed


def test_a_faster_side_is_an_improvement_and_a_small_change_is_none() -> None:
    assert {r.verdict for r in judge(records(10, ratio=0.85, seed=3)).results if r.kind == "timed"} == {
        "improvement"
    }
    small = judge(records(12, ratio=1.02, noise=0.002, seed=4))  # significant, but below the minimum effect
    assert {r.verdict for r in small.results if r.kind == "timed"} == {"no change"}
    assert all(r.q is not None and r.q < 0.05 for r in small.results if r.kind == "timed")


def test_memory_peaks_need_two_percent_and_a_mebibyte() -> None:
    grown = judge(records(6, memory_ratio=1.05))
    assert {r.verdict for r in grown.results if r.kind == "memory"} == {"regression"}
    assert {r.verdict for r in judge(records(6, memory_ratio=1.01)).results if r.kind == "memory"} == {
        "no change"
    }


def test_a_cell_failing_on_the_new_side_is_a_status_regression() -> None:
    j = judge(records(6, new_status="crashed"))
    assert [(s.round, s.verdict) for s in j.status_regressions] == [(2, "regression"), (2, "regression")]
    assert j.regressed
    md = render_markdown(j, {"ab": {"seed": 1, "rounds": 6}})
    assert "boom \\| here" in md  # what a record says is escaped where the table embeds it


def test_few_rounds_are_not_judged() -> None:
    j = judge(records(2))
    assert {r.verdict for r in j.results if r.kind == "timed" and r.cell_id != POOLED_ID} == {"not judged"}


def test_a_small_change_in_every_cell_is_seen_pooled_before_any_cell_sees_it() -> None:
    j = judge(records(10, ratio=1.08, noise=0.08, cells=8, seed=9))
    pooled = {r.metric: r for r in j.results if r.cell_id == POOLED_ID}
    assert pooled["prefill.latency_s"].verdict == "regression" and pooled["prefill.latency_s"].n == 80
    assert pooled["prefill.latency_s"].low < 1.08 < pooled["prefill.latency_s"].high
    assert "prefill.tokens_per_s" not in pooled  # a reciprocal is no test of its own
    per_cell = [r for r in j.results if r.metric == "prefill.latency_s" and r.cell_id != POOLED_ID]
    assert sum(r.verdict == "regression" for r in per_cell) < len(per_cell)  # some cells alone cannot tell
    same = judge(records(10, noise=0.08, cells=8, seed=9))
    assert {r.verdict for r in same.results if r.cell_id == POOLED_ID} == {"no change"}


def test_pooled_rounds_beyond_the_exact_table_use_the_normal_approximation() -> None:
    rng = np.random.default_rng(4)
    shifted, null = paired(rng.normal(0.03, 0.05, 200)), paired(rng.normal(0.0, 0.05, 200))
    assert shifted.n == 200 and shifted.p < 1e-6 and shifted.low < 0.03 < shifted.high
    assert null.p > 0.01 and null.low < 0 < null.high


def test_a_cell_settles_when_its_interval_is_decided() -> None:
    one = [r for r in records(12, noise=0.003, seed=5) if r["cell_id"] == "cell0"]
    assert not settled([r for r in one if r["ab.round"] <= 4])  # no 90 % interval below 5 rounds
    assert settled([r for r in one if r["ab.round"] <= 5])  # equivalent: inside +-2.5 %
    slowed = [r for r in records(12, ratio=1.3, noise=0.003, seed=5) if r["cell_id"] == "cell0"]
    assert settled([r for r in slowed if r["ab.round"] <= 6])  # wholly beyond +-5 % at 95 % (one test)
    # Among 8 cells the decided interval is at 1 - 0.05/8: 8 rounds cannot reach it, 9 can.
    assert not settled([r for r in slowed if r["ab.round"] <= 8], cells=8)
    assert settled([r for r in slowed if r["ab.round"] <= 9], cells=8)
    between = [r for r in records(6, ratio=1.04, noise=0.003, seed=5) if r["cell_id"] == "cell0"]
    assert not settled(between)  # straddles +-5 %: more rounds could decide it
    failing = [{**r, "status": "error"} for r in one if r["ab.round"] <= 2]
    assert settled(failing)


# -- schedule, keys, sides ---------------------------------------------------------------------------------


def test_rounds_alternate_which_side_goes_first_and_shuffle_cells() -> None:
    cells = [f"c{i}" for i in range(6)]
    rounds = [round_slots(11, r, cells) for r in range(1, 9)]
    for cell in cells:
        firsts = [next(s.side for s in slots if s.cell_id == cell and s.first) for slots in rounds]
        assert firsts.count("base") == firsts.count("new") == 4
        assert all(a != b for a, b in itertools.pairwise(firsts))
    for slots in rounds:  # each cell's two sides back to back
        assert [s.cell_id for s in slots[::2]] == [s.cell_id for s in slots[1::2]]
    assert len({tuple(s.cell_id for s in slots[::2]) for slots in rounds}) > 1
    assert round_slots(11, 3, cells) == rounds[2]  # a function of (seed, round): resume repeats it


def test_the_store_keeps_one_final_record_per_cell_side_and_round(tmp_path) -> None:
    store = RunStore.create(tmp_path / "ab", {"spec_hash": "x", "spec": {}, "plan": {}, "environment": {}})
    rec = {"cell_id": "abc", "status": "ok", "side": "base", "ab.round": 1}
    assert store.append(rec) and store.append({**rec, "side": "new"}) and store.append({**rec, "ab.round": 2})
    assert not store.append(rec)  # the same key again
    assert (
        store.final_cell_ids()
        == {"abc.base.1", "abc.new.1", "abc.base.2"}
        == {record_key(r) for r in store.records()}
    )
    assert record_key({"cell_id": "abc", "status": "ok"}) == "abc"


def test_sides_differences_name_interpreter_environment_and_versions() -> None:
    meta = {
        "ab": {
            "sides": {
                "base": {"python": "/a/python", "env": {}, "environment": {"host": {"transformers": "5.24"}}},
                "new": {
                    "python": "/b/python",
                    "env": {"PYTHONPATH": "x|y"},
                    "environment": {"host": {"transformers": "5.25"}},
                },
            }
        }
    }
    diffs = side_differences(meta)
    assert ("python", "/a/python", "/b/python") in diffs
    assert ("env PYTHONPATH", "(inherited)", "x|y") in diffs
    assert ("host.transformers", "5.24", "5.25") in diffs
    j = judge(records(6))
    md = render_markdown(j, meta)
    assert md.index("What differs") < md.index("Unchanged") and "x\\|y" in md
    assert json.loads(render_json(j, meta))["differences"][0]["field"] == "python"
