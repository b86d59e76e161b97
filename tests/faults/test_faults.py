"""Issue 12's faults, injected into real `loadbench run` processes (tiny model, CPU). docs/reliability.md.

Run: `python -m pytest -q tests/faults -m "slow or not slow"`. Every test here starts runner processes,
so all are slow-marked; each asserts what it injects breaks nothing: no finished record lost or duplicated,
every planned cell final or reported `missing`, no process of the runner's group left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bench.run.store import RunStore
from bench.schema import MISSING_STATUS

from .conftest import (
    CELLS,
    assert_each_planned_cell_final_once,
    assert_no_process_left,
    finish,
    records,
    run,
    run_args,
    start,
    wait_for_claim,
    wait_for_lines,
)

pytestmark = pytest.mark.slow


def _forget(out: Path, index: int = 0) -> str:
    """Drop one cell's record, as if a runner had died holding it; its cell_id."""
    lines = (out / "records.jsonl").read_bytes().splitlines()
    cell = json.loads(lines[index])["cell_id"]
    kept = [line for line in lines if json.loads(line)["cell_id"] != cell]
    (out / "records.jsonl").write_bytes(b"".join(line + b"\n" for line in kept))
    return cell


def _plant_claim(out: Path, cell: str, claim: str) -> None:
    (out / "claims").mkdir(exist_ok=True)
    (out / "claims" / cell).write_text(claim)


# --- 1. a claim left by a dead runner on another host, or naming a live pid, skipped a cell forever -------


@pytest.mark.parametrize(
    "claim",
    [
        "other-host 7\n",  # the reproduction: an older claim from a host that no longer exists
        json.dumps(
            {"host": "ci-runner-1", "pid": 7, "boot_id": "x", "heartbeat": time.time() - 3600, "lease_s": 360}
        ),
        json.dumps(
            {
                "host": os.uname().nodename,
                "pid": 1,
                "boot_id": "an-earlier-boot",
                "heartbeat": time.time(),
                "lease_s": 360,
            }
        ),
    ],
    ids=["old-format", "expired-heartbeat", "live-pid-earlier-boot"],
)
def test_a_stale_claim_is_taken_over_and_noted_in_the_cell_log(
    model: Path, tmp_path: Path, claim: str
) -> None:
    out = tmp_path / "run"
    code, text, _ = run(run_args(model, out, "--dtype", "float32"))
    assert code == 0, text[-2000:]
    cell = _forget(out)
    _plant_claim(out, cell, claim)
    code, text, pgid = run(run_args(model, out, "--dtype", "float32", "--resume"))
    assert code == 0, text[-2000:]
    assert_each_planned_cell_final_once(out)
    assert "took over a stale claim" in (out / "logs" / f"{cell}.log").read_text()
    assert_no_process_left(pgid)


def test_a_live_lease_is_waited_for_then_taken_over_when_its_heartbeat_stops(
    model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    code, text, _ = run(run_args(model, out, "--dtype", "float32"))
    assert code == 0, text[-2000:]
    cell = _forget(out)
    lease = {"host": "another-host", "pid": 7, "boot_id": None, "heartbeat": time.time(), "lease_s": 4}
    _plant_claim(out, cell, json.dumps(lease))
    begun = time.monotonic()
    code, text, pgid = run(run_args(model, out, "--dtype", "float32", "--resume"))
    assert code == 0, text[-2000:]
    assert time.monotonic() - begun >= 3  # it waited for the live lease rather than running the cell twice
    assert_each_planned_cell_final_once(out)
    assert "over its 4 s lease" in (out / "logs" / f"{cell}.log").read_text()
    assert_no_process_left(pgid)


# --- 2. two runners with different specs on one --out, a second apart ----------------------------------


def test_a_runner_of_another_spec_is_refused_while_the_first_runs(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = start(run_args(model, out), faults={CELLS[0]: "sleep"})
    wait_for_claim(out)  # its first cell is running (and sleeping): the first runner holds the directory
    code, text, pgid = run(run_args(model, out, dtype="float16"))
    assert code == 2 and "holds a run of spec_hash" in text and "Traceback" not in text, text[-2000:]
    assert_no_process_left(pgid)
    first.send_signal(signal.SIGINT)
    finish(first)
    spec_hashes = {r["spec_hash"] for r in records(out)}
    assert spec_hashes == {json.loads((out / "run.json").read_text())["spec_hash"]}
    assert_no_process_left(first.pid)


def test_two_runners_of_one_spec_share_the_cells(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    procs = [start(run_args(model, out, "--resume")) for _ in range(2)]
    for proc in procs:
        code, text = finish(proc)
        assert code == 0, text[-2000:]
        assert_no_process_left(proc.pid)
    assert_each_planned_cell_final_once(out)


# --- 3. --out holding the user's own files ------------------------------------------------------------


def test_out_with_the_users_own_files_is_refused_and_they_are_kept(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my report")
    (out / "records.csv").write_text("a,b\n1,2\n")
    code, text, pgid = run(run_args(model, out))
    assert code == 2 and "holds files that are not a loadbench run; choose another --out" in text, text[
        -2000:
    ]
    assert (out / "report.md").read_text() == "my report" and (
        out / "records.csv"
    ).read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in out.iterdir()) == ["records.csv", "report.md"]
    assert_no_process_left(pgid)


def test_report_never_overwrites_a_file_loadbench_did_not_write(model: Path, tmp_path: Path) -> None:
    from bench.cli import main

    out = tmp_path / "run"
    code, text, _ = run(run_args(model, out, "--dtype", "float32"))
    assert code == 0, text[-2000:]
    assert main(["report", str(out)]) == 0  # its own files: rendered again
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "report.md").write_text("my report")
    assert main(["report", str(out), "--out", str(elsewhere)]) == 2
    assert (elsewhere / "report.md").read_text() == "my report"
    assert not (elsewhere / "records.csv").exists()


# --- 4. readers: records of another spec / not planned; duplicates; merge A A -------------------------


def test_readers_drop_foreign_records_and_merge_refuses_a_directory_twice(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.cli import main

    out = tmp_path / "run"
    code, text, _ = run(run_args(model, out))
    assert code == 0, text[-2000:]
    first = records(out)[0]
    with (out / "records.jsonl").open("a") as handle:
        handle.write(json.dumps({**first, "spec_hash": "0" * 16, "status": "oom"}) + "\n")
        handle.write(json.dumps({**first, "cell_id": "f" * 16}) + "\n")
        handle.write(json.dumps({**first, "status": "crashed"}) + "\n")
    with pytest.warns(Warning) as caught:
        assert main(["report", str(out)]) == 0
    said = " ".join(str(w.message) for w in caught)
    assert (
        "another spec" in said and "not in run.json's plan" in said and "more than one final record" in said
    )
    assert "f" * 16 not in (out / "records.csv").read_text()
    assert "oom" not in (out / "report.md").read_text() and "crashed" not in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["merge", str(out), str(out), "--out", str(tmp_path / "merged")]) == 2
    assert "more than once" in capsys.readouterr().err and not (tmp_path / "merged").exists()


# --- kill -9 of the runner; then missing cells, report, resume ------------------------------------------


def test_sigkill_of_the_runner_leaves_missing_cells_that_report_lists_and_resume_runs(
    model: Path, tmp_path: Path
) -> None:
    from bench.cli import main

    out = tmp_path / "run"
    proc = start(run_args(model, out), faults={CELLS[2]: "sleep"})
    wait_for_lines(out / "records.jsonl", 2)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done = {r["cell_id"] for r in records(out)}
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert report.count(MISSING_STATUS) >= 4 - len(done)
    code, text, pgid = run(run_args(model, out, "--resume"))
    assert code == 0, text[-2000:]
    final = assert_each_planned_cell_final_once(out)
    assert {r["cell_id"] for r in final} >= done  # nothing finished before the kill was lost
    assert_no_process_left(pgid)


def test_a_run_ending_with_missing_cells_says_so_and_exits_3(model: Path, tmp_path: Path, capsys) -> None:
    from bench.cli import build_parser
    from bench.commands.plan import load_spec
    from bench.plan.capabilities import probe_cached
    from bench.plan.planning import make_plan
    from bench.run.session import StageResult, print_summary

    out = tmp_path / "run"
    code, text, _ = run(run_args(model, out, "--dtype", "float32"))
    assert code == 0, text[-2000:]
    # The same matrix with both dtypes, read as the CLI reads it: two of its four cells never ran here.
    args = build_parser().parse_args(run_args(model, out)[3:])
    cells = make_plan(load_spec(args), probe_cached().host).cells
    missing = print_summary(RunStore.open(out), cells, "")
    printed = capsys.readouterr().out
    assert len(missing) == 2 and "2 planned cell(s) have no final record (missing)" in printed
    assert StageResult(out, missing).exit_code == 3


# --- faults that already held: a killed cell, a hang, corrupt weights, Ctrl-C, a full disk -----------------


def test_a_killed_cell_and_a_hung_cell_end_crashed_and_timeout(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, text, pgid = run(
        run_args(model, out, "--timeout", "5"), faults={CELLS[0]: "abort", CELLS[1]: "sleep"}
    )
    assert code == 0, text[-2000:]
    by_label = {r["label"]: r["status"] for r in assert_each_planned_cell_final_once(out)}
    assert by_label[CELLS[0]] == "crashed" and by_label[CELLS[1]] == "timeout"
    assert_no_process_left(pgid)


def test_corrupt_weights_end_every_cell_as_error(model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "run"
    code, text, pgid = run(run_args(broken, out, "--dtype", "float32"))
    assert code == 0, text[-2000:]
    assert {r["status"] for r in assert_each_planned_cell_final_once(out)} == {"error"}
    assert_no_process_left(pgid)


def test_ctrl_c_counts_interrupted_and_resume_finishes(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = start(run_args(model, out), faults={CELLS[1]: "sleep"})
    wait_for_lines(out / "records.jsonl", 1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    code, text = finish(proc)
    assert code == 130 and "interrupted 1" in text and "failed 0" in text, text[-2000:]
    assert_no_process_left(proc.pid)
    code, text, pgid = run(run_args(model, out, "--resume"))
    assert code == 0, text[-2000:]
    assert_each_planned_cell_final_once(out)
    assert_no_process_left(pgid)


def test_a_read_only_output_directory_is_one_sentence(model: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory modes, so a read-only directory cannot be made here")
    parent = tmp_path / "ro"
    parent.mkdir(mode=0o555)
    code, text, pgid = run(run_args(model, parent / "run"))
    assert code == 2 and "cannot write to the output directory" in text and "Traceback" not in text
    assert_no_process_left(pgid)


def test_a_full_disk_keeps_every_finished_record(model: Path, tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.decode().strip() or 'mount refused'})")
    try:
        out = mount / "run"
        code, text, pgid = run(run_args(model, out))
        assert code in (0, 2, 3) and "Traceback" not in text, text[-2000:]
        finished = [r for r in records(out)]  # every line parses: no torn line is left behind
        assert len({r["cell_id"] for r in finished}) == len(finished)
        assert_no_process_left(pgid)
    finally:
        subprocess.run(["umount", str(mount)], check=False)
