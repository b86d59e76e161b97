"""The results store: real files in tmp_path, real processes; nothing mocked."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import errors, schema
from bench.run import claims
from bench.run.store import (
    ALL_STATUSES,
    FINAL_STATUSES,
    NON_FINAL_STATUSES,
    SCHEMA_VERSION,
    RunStore,
    StoreError,
    StoreWarning,
    environments,
    merge,
    select_shard,
)


def _meta(spec_hash: str = "a" * 16, **env: Any) -> dict[str, Any]:
    return {
        "spec_hash": spec_hash,
        "spec": {"model": "tiny-llama", "dtype": ["bfloat16"]},
        "plan": [
            {"cell_id": "ab" * 8, "action": "run"},
            *({"cell_id": _cid(i), "action": "run"} for i in range(8)),
        ],
        "environment": {"host": "h1", "torch": "2.9.0", **env},
        "schema_version": SCHEMA_VERSION,
    }


def _cid(i: int) -> str:
    return f"{i:016x}"


def _raw_lines(store: RunStore) -> list[str]:
    return store.records_path.read_text(encoding="utf-8").split("\n")


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore.create(tmp_path / "run", _meta())


# --- create / open ---------------------------------------------------------------------------------------


def test_create_writes_run_json(store: RunStore) -> None:
    on_disk = json.loads(store.run_path.read_text())
    assert on_disk["spec_hash"] == "a" * 16
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert store.meta == on_disk
    assert RunStore.open(store.directory).meta == on_disk
    assert not list(store.directory.glob(".*probe*")) and not list(store.directory.glob("*.tmp"))


def test_open_refuses_a_directory_without_run_json(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"is not a loadbench run directory \(no run.json\)"):
        RunStore.open(tmp_path)


def test_create_refuses_meta_without_spec_hash(tmp_path: Path) -> None:
    meta = _meta()
    del meta["spec_hash"]
    with pytest.raises(StoreError, match="spec_hash"):
        RunStore.create(tmp_path / "run", meta)


def test_create_on_an_existing_run_without_resume_refuses(store: RunStore) -> None:
    store.append({"cell_id": _cid(1), "status": "ok"})
    with pytest.raises(StoreError, match=r"already holds a loadbench run.*--resume.*--out"):
        RunStore.create(store.directory, _meta())


def test_a_runner_of_another_spec_is_refused_even_before_any_record(store: RunStore) -> None:
    """Issue 12, fault 2: a second runner a second later used to rewrite run.json and mix two specs."""
    with pytest.raises(
        StoreError, match=r"holds a run of spec_hash 'a{16}' but this spec has spec_hash 'b{16}'"
    ):
        RunStore.create(store.directory, _meta("b" * 16))
    assert json.loads(store.run_path.read_text())["spec_hash"] == "a" * 16


def test_a_runner_of_the_same_spec_joins_the_run_without_rewriting_it(store: RunStore) -> None:
    joined = RunStore.create(store.directory, _meta(host="h2"))
    assert joined.meta["environment"]["host"] == "h1"
    assert [env["host"] for env in environments(joined.meta)] == ["h1", "h2"]


def test_out_holding_someone_elses_files_is_refused(tmp_path: Path) -> None:
    """Issue 12, fault 3: --out on a directory of the user's own files."""
    (tmp_path / "report.md").write_text("my notes")
    with pytest.raises(StoreError, match="holds files that are not a loadbench run; choose another --out"):
        RunStore.create(tmp_path, _meta())
    assert (tmp_path / "report.md").read_text() == "my notes" and not (tmp_path / "run.json").exists()


def test_every_record_carries_the_spec_hash(store: RunStore) -> None:
    store.append({"cell_id": _cid(1), "status": "ok"})
    assert json.loads(store.records_path.read_text())["spec_hash"] == "a" * 16


def test_resume_with_same_spec_keeps_records(store: RunStore) -> None:
    store.append({"cell_id": _cid(1), "status": "ok", "load.model_s": 1.5})
    resumed = RunStore.create(store.directory, _meta(host="h2"), resume=True)
    assert resumed.final_cell_ids() == {_cid(1)}
    assert resumed.meta["environment"]["host"] == "h1"
    assert resumed.meta["resumed_environments"] == [{"host": "h2", "torch": "2.9.0"}]
    resumed.append({"cell_id": _cid(2), "status": "ok"})
    envs = environments(RunStore.open(store.directory).meta)
    hosts = {r["cell_id"]: envs[r["env_index"]]["host"] for r in resumed.records()}
    assert hosts == {_cid(1): "h1", _cid(2): "h2"}  # each record points at the environment that wrote it


def test_resume_with_another_spec_names_both_hashes(store: RunStore) -> None:
    store.append({"cell_id": _cid(1), "status": "ok"})
    with pytest.raises(StoreError, match=r"holds a run of .*'a{16}'.*'b{16}'"):
        RunStore.create(store.directory, _meta("b" * 16), resume=True)
    assert json.loads(store.run_path.read_text())["spec_hash"] == "a" * 16


def test_resume_of_an_empty_directory_starts_a_run(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "new", _meta(), resume=True)
    assert store.meta["spec_hash"] == "a" * 16


def test_create_refuses_an_output_path_under_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot write to the output directory"):
        RunStore.create(blocker / "run", _meta())
    with pytest.raises(StoreError, match="is not a directory"):
        RunStore.create(blocker, _meta())


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory modes")
def test_create_refuses_an_unwritable_directory(tmp_path: Path) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="cannot write to the output directory"):
            RunStore.create(parent / "run", _meta())
    finally:
        parent.chmod(0o700)


# --- append / records ------------------------------------------------------------------------------------


def test_append_read_round_trip(store: RunStore) -> None:
    record = {
        "cell_id": _cid(1),
        "status": "ok",
        "dtype": "bfloat16",
        "load.model_s": 0.25,
        "decode.ttft_s": None,
    }
    assert store.append(record) is True
    [back] = store.records()
    assert back == {**record, "schema_version": SCHEMA_VERSION, "spec_hash": "a" * 16, "env_index": 0}


def test_each_append_is_one_line(store: RunStore) -> None:
    for i in range(5):
        store.append({"cell_id": _cid(i), "status": "ok", "note": "two\nlines", "x": float("nan")})
    lines = _raw_lines(store)
    assert lines[-1] == ""  # the file ends with a newline
    assert len(lines[:-1]) == 5
    parsed = [json.loads(line) for line in lines[:-1]]
    assert [p["cell_id"] for p in parsed] == [_cid(i) for i in range(5)]
    assert parsed[0]["note"] == "two\nlines" and parsed[0]["x"] is None


def test_append_requires_cell_id_and_a_known_status(store: RunStore) -> None:
    with pytest.raises(StoreError, match="cell_id"):
        store.append({"status": "ok"})
    with pytest.raises(StoreError, match="status 'done'"):
        store.append({"cell_id": _cid(1), "status": "done"})
    with pytest.raises(StoreError, match="cannot be stored as JSON"):
        store.append({"cell_id": _cid(1), "status": "ok", "bad": object()})
    assert not store.records_path.exists()


def test_a_second_final_record_of_a_cell_is_not_appended(store: RunStore) -> None:
    assert store.append({"cell_id": _cid(1), "status": "interrupted"}) is True
    assert store.append({"cell_id": _cid(1), "status": "ok"}) is True
    assert store.append({"cell_id": _cid(1), "status": "error"}) is False
    other = RunStore.open(store.directory)  # a second store sees the first one's record on disk
    assert other.append({"cell_id": _cid(1), "status": "timeout"}) is False
    assert [r["status"] for r in store.records()] == ["interrupted", "ok"]
    assert store.final_cell_ids() == {_cid(1)}


def test_torn_last_line_is_ignored_and_the_next_append_survives(store: RunStore) -> None:
    store.append({"cell_id": _cid(1), "status": "ok"})
    with store.records_path.open("ab") as handle:
        handle.write(b'{"cell_id": "' + _cid(2).encode() + b'", "status": "o')
    with pytest.warns(StoreWarning, match="torn last line"):
        assert [r["cell_id"] for r in store.records()] == [_cid(1)]
    assert store.skipped_lines == 1
    assert store.append({"cell_id": _cid(2), "status": "ok"}) is True
    with pytest.warns(StoreWarning, match="skipped 1 unreadable line"):
        assert [r["cell_id"] for r in store.records()] == [_cid(1), _cid(2)]


def test_torn_lines_in_the_middle_are_skipped_and_counted(store: RunStore) -> None:
    store.append({"cell_id": _cid(1), "status": "ok"})
    with store.records_path.open("ab") as handle:
        handle.write(b'{"cell_id": "x\n[1, 2]\n')
    store.append({"cell_id": _cid(2), "status": "ok"})
    with pytest.warns(StoreWarning, match="skipped 2 unreadable"):
        assert [r["cell_id"] for r in store.records()] == [_cid(1), _cid(2)]
    assert store.skipped_lines == 2


# --- claims ----------------------------------------------------------------------------------------------


def _claim_file(store: RunStore, i: int) -> dict[str, Any]:
    return json.loads((store.claims_dir / _cid(i)).read_text())


def _write_claim(store: RunStore, i: int, **fields: Any) -> None:
    base = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "boot_id": claims.boot_id(),
        "heartbeat": time.time(),
        "lease_s": 60.0,
    }
    store.claims_dir.mkdir(exist_ok=True)
    (store.claims_dir / _cid(i)).write_text(json.dumps({**base, **fields}))


def test_claim_and_release(store: RunStore) -> None:
    assert store.claim(_cid(1)) is True
    assert store.claim(_cid(1)) is True  # our own claim again
    held = _claim_file(store, 1)
    assert (held["host"], held["pid"], held["boot_id"]) == (
        socket.gethostname(),
        os.getpid(),
        claims.boot_id(),
    )
    assert abs(held["heartbeat"] - time.time()) < 60 and held["lease_s"] > 0
    store.release(_cid(1))
    assert not (store.claims_dir / _cid(1)).exists()


def test_refresh_renews_the_heartbeat_of_our_own_claims_only(store: RunStore) -> None:
    store.claim(_cid(1), lease_s=50.0)
    _write_claim(store, 2, host="elsewhere", heartbeat=time.time() - 10)
    before = (_claim_file(store, 1)["heartbeat"], _claim_file(store, 2)["heartbeat"])
    time.sleep(0.01)
    store.refresh([_cid(1), _cid(2)], lease_s=50.0)
    assert _claim_file(store, 1)["heartbeat"] > before[0]
    assert _claim_file(store, 2)["heartbeat"] == before[1]


def test_a_finished_cell_cannot_be_claimed(store: RunStore) -> None:
    store.append({"cell_id": _cid(1), "status": "oom"})
    assert store.claim(_cid(1)) is False


def test_a_live_process_claim_blocks(store: RunStore) -> None:
    sleeper = subprocess.Popen(["sleep", "5"])
    try:
        _write_claim(store, 1, pid=sleeper.pid)
        _write_claim(store, 2, host="another-host", pid=7)  # fresh heartbeat: respected whatever its host
        assert store.claim(_cid(1)) is False and store.claim(_cid(2)) is False
        store.release(_cid(1))  # not ours: left alone
        assert (store.claims_dir / _cid(1)).exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stale_claims_are_taken_over_with_a_note_in_the_cell_log(store: RunStore) -> None:
    """Issue 12, fault 1: a dead runner's claim on another host, or naming a live pid, held a cell forever."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid no longer exists
    _write_claim(store, 1, pid=dead.pid)
    (store.claims_dir / _cid(2)).write_text("torn")
    (store.claims_dir / _cid(3)).write_text("other-host 7\n")  # the reproduction (old format)
    _write_claim(store, 4, host="other-host", heartbeat=time.time() - 61)  # lease of 60 s expired
    _write_claim(store, 5, pid=1, boot_id="another-boot")  # a live pid, but of an earlier boot
    _write_claim(store, 6, pid=1, heartbeat=time.time() - 3600)  # a live pid that stopped beating
    for i in range(1, 7):
        assert store.claim(_cid(i)) is True, i
        assert _claim_file(store, i)["pid"] == os.getpid()
    notes = {i: (store.directory / "logs" / f"{_cid(i)}.log").read_text() for i in range(1, 7)}
    assert f"process {dead.pid} on this host is gone" in notes[1]
    assert "not a complete claim" in notes[2] and "not a complete claim" in notes[3]
    assert "over its 60 s lease" in notes[4] and "over its 60 s lease" in notes[6]
    assert "before this host rebooted" in notes[5]


# --- two processes on one directory ----------------------------------------------------------------------


def _append_many(directory: str, ids: list[int], barrier: Any, results: Any) -> None:
    """Runs in a spawned process: append final records, some of them for cells the other one writes."""
    store = RunStore.open(directory)
    barrier.wait()
    written = 0
    for i in ids:
        written += store.append({"cell_id": _cid(i), "status": "ok", "pad": "x" * (i % 97) * 40})
    results.put(written)


def test_two_processes_append_concurrently_without_torn_lines_or_duplicates(store: RunStore) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    plans = [list(range(0, 200)), list(range(100, 300))]  # cells 100..199 are written by both
    procs = [
        ctx.Process(target=_append_many, args=(str(store.directory), ids, barrier, results)) for ids in plans
    ]
    for proc in procs:
        proc.start()
    written = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    lines = _raw_lines(store)
    assert lines[-1] == ""
    cell_ids = [json.loads(line)["cell_id"] for line in lines[:-1]]  # every line parses: none is torn
    assert len(cell_ids) == len(set(cell_ids)) == 300
    assert set(cell_ids) == {_cid(i) for i in range(300)}
    assert sum(written) == 300


# --- shards ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    cell_id: str


@settings(max_examples=150, deadline=None)
@given(ids=st.lists(st.text("0123456789abcdef", min_size=1, max_size=40), unique=True, max_size=60))
def test_shards_are_disjoint_and_cover_all_cells(ids: list[str]) -> None:
    cells = [Cell(cell_id) for cell_id in ids]
    for count in range(1, 7):
        shards = [select_shard(cells, f"{index}/{count}") for index in range(1, count + 1)]
        chosen = [cell.cell_id for shard in shards for cell in shard]
        assert sorted(chosen) == sorted(ids)
        assert len(chosen) == len(set(chosen))
        assert select_shard(cells, (1, count)) == shards[0]


def test_select_shard_accepts_dicts_and_keeps_order() -> None:
    cells = [{"cell_id": f"{i:012x}ffff"} for i in range(10)]  # the shard depends on the first 12 hex digits
    assert select_shard(cells, "1/2") == cells[0::2]
    assert select_shard(cells, " 2 / 2 ") == cells[1::2]
    assert select_shard(cells, "1/1") == cells


@pytest.mark.parametrize("bad", ["0/2", "3/2", "1/0", "1-2", "", "a/b", "1/2/3", "-1/2", (0, 1), (True, 1)])
def test_bad_shard_strings_are_refused(bad: Any) -> None:
    with pytest.raises(StoreError, match=r"--shard must look like I/N with 1 <= I <= N, got"):
        select_shard([], bad)


def test_select_shard_refuses_a_non_hex_cell_id() -> None:
    with pytest.raises(StoreError, match="not a hex string"):
        select_shard([{"cell_id": "zz"}], "1/2")


# --- merge -----------------------------------------------------------------------------------------------


def _shard_run(directory: Path, ids: list[int], spec_hash: str = "a" * 16, host: str = "h1") -> RunStore:
    store = RunStore.create(directory, _meta(spec_hash, host=host))
    for i in ids:
        store.append({"cell_id": _cid(i), "status": "ok", "shard_host": host})
    return store


def test_merge_refuses_different_specs(tmp_path: Path) -> None:
    _shard_run(tmp_path / "s1", [1])
    _shard_run(tmp_path / "s2", [2], spec_hash="b" * 16)
    with pytest.raises(StoreError, match=r"cannot merge .*s1 and .*s2: they ran different specs"):
        merge([tmp_path / "s1", tmp_path / "s2"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_joins_disjoint_shards(tmp_path: Path) -> None:
    _shard_run(tmp_path / "s1", [0, 2, 4], host="h1")
    _shard_run(tmp_path / "s2", [1, 3, 4], host="h2")  # cell 4 ran twice: the first shard's record is kept
    merged = merge([tmp_path / "s1", tmp_path / "s2"], tmp_path / "out")
    assert merged.meta["merged_from"] == [str(tmp_path / "s1"), str(tmp_path / "s2")]
    assert merged.meta["merge_duplicates"] == 1
    assert [env["host"] for env in merged.meta["environments"]] == ["h1", "h2"]
    assert RunStore.open(tmp_path / "out").meta["merge_duplicates"] == 1
    assert merged.final_cell_ids() == {_cid(i) for i in range(5)}
    records = {r["cell_id"]: r for r in merged.records()}
    assert records[_cid(4)]["shard_host"] == "h1"
    envs = environments(merged.meta)
    # each record keeps the environment that ran it
    assert all(envs[r["env_index"]]["host"] == r["shard_host"] for r in records.values())


# --- vocabulary and errors -------------------------------------------------------------------------------


def test_the_store_re_exports_the_schema_vocabulary_and_the_bench_error() -> None:
    assert (SCHEMA_VERSION, FINAL_STATUSES, NON_FINAL_STATUSES, ALL_STATUSES) == (
        schema.SCHEMA_VERSION,
        schema.FINAL_STATUSES,
        schema.NON_FINAL_STATUSES,
        schema.ALL_STATUSES,
    )
    assert StoreError is errors.StoreError and issubclass(StoreError, ValueError)


def test_progress_summary_counts_interrupted_as_interrupted() -> None:
    """Issue 12, item 7: `interrupted` is not a failure (--resume runs it), so it has its own count."""
    from bench.run.progress import PlainProgress

    stream = io.StringIO()
    progress = PlainProgress(stream)
    for status in ("ok", "ok", "skipped", "oom", "interrupted"):
        progress.counter[status] += 1
    progress.stop()
    assert stream.getvalue() == "loadbench: ok 2 · skipped 1 · failed 1 · interrupted 1\n"


# --- readers: only the run's own records (issue 12, fault 4) ----------------------------------------------


def test_readers_drop_records_of_another_spec_or_not_in_the_plan_and_report_duplicates(
    store: RunStore,
) -> None:
    from bench.analysis.frame import Run

    store.append({"cell_id": _cid(1), "status": "ok", "n": 1})
    with store.records_path.open("a") as handle:  # what a second spec or a hand edit could leave behind
        handle.write(json.dumps({"cell_id": _cid(2), "status": "ok", "spec_hash": "b" * 16}) + "\n")
        handle.write(json.dumps({"cell_id": "ff" * 8, "status": "ok", "spec_hash": "a" * 16}) + "\n")
        handle.write(json.dumps({"cell_id": _cid(1), "status": "oom", "spec_hash": "a" * 16}) + "\n")
    with pytest.warns(StoreWarning) as caught:
        run = Run.open(store.directory)
    messages = " ".join(str(w.message) for w in caught)
    assert "ignored 1 record(s) of another spec" in messages
    assert "ignored 1 record(s) of cells that are not in run.json's plan" in messages
    assert "1 cell(s) have more than one final record" in messages
    rows = {row["cell_id"]: row for row in run.latest()}
    assert rows[_cid(1)]["status"] == "ok"  # the first final record, as resume and merge keep it
    assert "ff" * 8 not in rows
    assert rows[_cid(2)]["status"] == schema.MISSING_STATUS  # planned, and its only record was another spec's
    assert {r["status"] for cid, r in rows.items() if cid != _cid(1)} == {schema.MISSING_STATUS}


def test_merge_of_one_directory_twice_is_refused(tmp_path: Path) -> None:
    _shard_run(tmp_path / "s1", [1])
    with pytest.raises(
        StoreError, match=r"merge was given .*s1 more than once; name each shard directory once"
    ):
        merge([tmp_path / "s1", tmp_path / "s1"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
