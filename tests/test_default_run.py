"""`loadbench run` with no matrix arguments, end to end on this CPU: the issue's definition of done."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.plan.matrix import load_preset
from bench.run.store import FINAL_STATUSES, RunStore
from bench.schema import MIN_SAMPLES

# one worker runs the default run once for all of these tests (CI runs the slow tests on two workers)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("default_run")]

TIMED = [
    "prefill.latency_s",
    "prefill.tokens_per_s",
    "train.step_s",
    "train.tokens_per_s",
    "decode.ttft_s",
    "decode.tpot_s",
    "decode.tokens_per_s",
]
LOAD = [
    "load.tokenizer_s",
    "load.config_s",
    "load.model_s",
    "load.model_first_s",
    "load.first_forward_s",
    "load.read_floor_s",
]
PHASES = ["load", "prefill", "decode", "train"]
GPU_ONLY = (
    [f"mem.{p}.torch_{k}_bytes" for p in PHASES for k in ("allocated", "reserved")]
    + [f"mem.{p}.nvml_{k}_bytes" for p in PHASES for k in ("device", "process")]
    + [f"energy.{w}.j_per_token" for w in ("prefill", "decode", "train")]
    + ["prefill.mfu", "train.mfu", "decode.mbu"]
)


# session, not module: a worker of pytest-xdist may tear a module fixture down between batches of its tests
@pytest.fixture(scope="session")
def default_run(tmp_path_factory, ckpt_cache):
    out = tmp_path_factory.mktemp("default") / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("LOADBENCH_CACHE", str(ckpt_cache))
    try:
        assert main(["run", "--out", str(out), "--no-live"]) == 0
    finally:
        mp.undo()
    return RunStore.open(out)


def test_one_final_record_per_planned_cell(default_run) -> None:
    records = default_run.records()
    planned = default_run.meta["plan"]
    assert len(planned) == 24 == len(records)
    assert sorted(r["cell_id"] for r in records) == sorted(p["cell_id"] for p in planned)
    assert all(r["status"] in FINAL_STATUSES for r in records)
    assert default_run.meta["spec"]["model"] == load_preset("default").model


def test_every_cpu_metric_has_n_and_spread(default_run) -> None:
    ok = [r for r in default_run.records() if r["status"] == "ok"]
    assert len(ok) == 24
    for r in ok:
        for m in TIMED:
            assert r[m] > 0, (r["label"], m)
            assert r[f"{m}.n"] >= MIN_SAMPLES, (r["label"], m)
            assert r[f"{m}.p10"] <= r[m] <= r[f"{m}.p90"], (r["label"], m)
            assert r[f"{m}.iqr"] >= 0 and len(r[f"{m}.samples"]) == r[f"{m}.n"]
        for m in LOAD:
            assert r[m] > 0, (r["label"], m)
        for p in PHASES:
            assert r[f"mem.{p}.rss_bytes"] > 0
        assert r["mem.footprint_bytes"] > 0 and r["threads"] == 1
        assert r["prefill.flops_per_token"] > 0 and r["params.matmul"] > 0


def test_gpu_only_metrics_are_null_with_a_reason(default_run) -> None:
    for r in default_run.records():
        if r["status"] != "ok":
            continue
        for m in GPU_ONLY:
            assert r[m] is None, (r["label"], m)
            assert isinstance(r[f"{m}.reason"], str) and r[f"{m}.reason"], (r["label"], m)


def test_run_json_holds_environment_and_plan(default_run) -> None:
    meta = default_run.meta
    env = meta["environment"]
    assert env["cpu_cores_logical"] >= 1 and env["torch_version"] and env["transformers_version"]
    assert meta["isolation"] == "forkserver" and meta["template_startup_s"] > 0
    assert "calibration" not in meta  # CPU host: no calibration probe ran, and records say so


def test_load_time_is_sampled_with_n_at_least_min_samples(default_run) -> None:
    # issue 13's definition of done: compare can judge the headline metric, even on its own
    for r in default_run.records():
        assert r["load.model_s.n"] >= MIN_SAMPLES >= 10, r["label"]
        assert len(r["load.model_s.samples"]) == r["load.model_s.n"]
        assert r["load.model_s.ci_low"] <= r["load.model_s"] <= r["load.model_s.ci_high"]
        assert r["load.model_s.stop"] in ("settled", "budget", "max_n")
        assert r["load.model_first_s"] > 0  # the first load, kept apart from the samples
        assert r["decode.use_cache"] in (True, False)  # decode says whether the KV cache was on
        for m in TIMED:
            assert r[f"{m}.blocks"] >= 1 and r[f"{m}.stop"] in ("settled", "budget", "max_n"), m


def test_run_json_holds_the_drift_probe_at_start_and_end(default_run) -> None:
    drift = default_run.meta["drift"]
    start, end = drift["start"], drift["end"]
    assert start["probe"] == end["probe"] == "cpu-matmul-fp32-1t" and start["unit"] == "GFLOP/s"
    assert start["speed"] > 0 and end["speed"] > 0 and len(start["samples"]) >= 10
    assert start["at"] < end["at"]
    assert drift["end_over_start"] == end["speed"] / start["speed"]
