"""The results store of one run directory: `run.json`, `records.jsonl` and the claims of live runners.

A run directory must survive a killed process, a full disk and two runners sharing it, because a matrix
can take hours and every finished cell is worth keeping. So: run.json is replaced atomically, each record
is one fsynced line appended with a single write under a file lock, a reader skips the torn line a killed
writer can leave, and a final record is never appended twice for one cell. Shards split cells by their
`cell_id` and merge back by concatenation.

Here: RunStore and merge (both write records.jsonl under the run's lock). The record line format is in
bench.run.records, claim files in bench.run.claims, shard selection in bench.run.shards.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock

from bench.errors import StoreError
from bench.fileio import atomic_write_bytes, fsync_dir, write_all
from bench.run.claims import DEFAULT_LEASE_S, drop_claim, refresh_claim, take_claim
from bench.run.ownership import own_records
from bench.run.records import (
    StoreWarning,
    check_cell_id,
    check_record,
    dumps_line,
    finite,
    is_final,
    parse_line,
    record_key,
    warn_skipped,
)
from bench.run.shards import parse_shard, select_shard
from bench.schema import ALL_STATUSES, FINAL_STATUSES, NON_FINAL_STATUSES, SCHEMA_VERSION

# The vocabulary (bench.schema), StoreError (bench.errors), StoreWarning and shard selection are
# re-exported: runners, readers and tests import them from here.
__all__ = [
    "ALL_STATUSES",
    "FINAL_STATUSES",
    "NON_FINAL_STATUSES",
    "SCHEMA_VERSION",
    "RunStore",
    "StoreError",
    "StoreWarning",
    "environments",
    "merge",
    "parse_shard",
    "select_shard",
]

RUN_FILE = "run.json"
RECORDS_FILE = "records.jsonl"
LOCK_FILE = "records.jsonl.lock"
CLAIMS_DIR = "claims"
REQUIRED_META = ("spec_hash", "spec", "plan", "environment")
# Writers hold the lock for one short append; a minute of waiting means something is wrong.
LOCK_TIMEOUT_S = 60.0


# --- files -------------------------------------------------------------------------------------


def _check_ours(directory: Path) -> None:
    """loadbench writes only into a new or empty directory or its own run directory (it has run.json)."""
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"{directory} exists and is not a directory; choose another --out.")
    try:
        foreign = (
            directory.is_dir()
            and not (directory / RUN_FILE).exists()
            and any(not _in_flight(p.name) for p in directory.iterdir())
        )
    except OSError as exc:
        raise StoreError(f"cannot list {directory} ({exc.strerror or exc}); choose another --out.") from exc
    if foreign:
        raise StoreError(f"{directory} holds files that are not a loadbench run; choose another --out.")


def _in_flight(name: str) -> bool:
    """A file another runner of this store is creating right now (its lock, its write probe, run.json's
    temporary): a directory holding only these is a run being created, not someone else's files."""
    return name == LOCK_FILE or name.startswith((".write-probe-", f".{RUN_FILE}."))


def _probe_writable(directory: Path) -> None:
    """Fail before any cell runs, not after an hour of measurements that cannot be saved."""
    probe = directory / f".write-probe-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, b"loadbench write probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StoreError(
            f"cannot write to the output directory {directory} ({reason}); choose another --out."
        ) from exc


def _read_json(path: Path) -> dict[str, Any]:
    """run.json as a dict; a damaged file is a StoreError, not a traceback."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} cannot be read as JSON ({exc}); the run directory is damaged.") from exc
    if not isinstance(data, dict):
        raise StoreError(f"{path} does not hold a JSON object; the run directory is damaged.")
    return data


# --- the store ------------------------------------------------------------------------------------------


class RunStore:
    """One run directory. Create it with `RunStore.create` to run cells, `RunStore.open` to read it."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._directory = Path(directory)
        self._meta: dict[str, Any] | None = None
        # Index into environments(meta) stamped on each record this process appends; None: not stamped.
        self._env_index: int | None = None
        # Final cell_ids seen in records.jsonl up to byte _scanned (the file only grows).
        self._final_ids: set[str] = set()
        self._scanned = 0
        self._scanned_inode: int | None = None
        self._lock = filelock.FileLock(str(self._directory / LOCK_FILE), timeout=LOCK_TIMEOUT_S)
        self.skipped_lines = 0

    def __repr__(self) -> str:
        return f"RunStore({str(self._directory)!r})"

    # paths

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def run_path(self) -> Path:
        return self._directory / RUN_FILE

    @property
    def records_path(self) -> Path:
        return self._directory / RECORDS_FILE

    @property
    def claims_dir(self) -> Path:
        return self._directory / CLAIMS_DIR

    @property
    def meta(self) -> dict[str, Any]:
        """run.json as loaded (or as written by create); treat it as read-only."""
        if self._meta is None:
            self._meta = _read_json(self.run_path)
        return self._meta

    # construction

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> RunStore:
        """An existing run, for reading (or for appending by a tool that did not create it)."""
        store = cls(directory)
        if not store.run_path.is_file():
            raise StoreError(f"{store.directory} is not a loadbench run directory (no {RUN_FILE}).")
        store.meta  # noqa: B018 - load now so a damaged run.json fails here, not later
        return store

    @classmethod
    def create(
        cls, directory: str | os.PathLike[str], run_meta: Mapping[str, Any], *, resume: bool = False
    ) -> RunStore:
        """Start (or, with resume, continue) a run; refuses anything that would lose or mix results."""
        meta = _new_meta(run_meta)
        store = cls(directory)
        _check_ours(store.directory)
        _probe_writable(store.directory)
        with store._locked():
            if store.run_path.exists():
                store._reuse(meta, resume=resume)
            else:
                store._start(meta)
        return store

    def _start(self, meta: dict[str, Any]) -> None:
        """A fresh run.json; records without one are someone else's data, never adopted."""
        if self._has_records():
            raise StoreError(
                f"{self.directory} holds {RECORDS_FILE} but no {RUN_FILE}; it is not a complete loadbench run, "
                "choose another --out."
            )
        self._write_meta(meta)
        self._env_index = 0

    def _reuse(self, meta: dict[str, Any], *, resume: bool) -> None:
        """An existing run.json is never replaced: same spec only (whatever the timing: a runner started a
        second after another joins its run or is refused), and records need --resume."""
        if not resume and self._has_records():
            raise StoreError(
                f"{self.directory} already holds a loadbench run with records; pass --resume to continue it "
                "or choose another --out."
            )
        self._resume(meta)

    def _resume(self, meta: dict[str, Any]) -> None:
        """Same spec only: mixing two specs in one directory would make the results meaningless."""
        old = _read_json(self.run_path)
        if old.get("spec_hash") != meta["spec_hash"]:
            raise StoreError(
                f"{self.directory} holds a run of spec_hash {old.get('spec_hash')!r} but this spec has "
                f"spec_hash {meta['spec_hash']!r}; use the original spec or another --out."
            )
        if old.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(
                f"cannot resume {self.directory}: it was written with schema_version "
                f"{old.get('schema_version')!r} and this loadbench writes {SCHEMA_VERSION}; use another --out."
            )
        old.setdefault("resumed_environments", []).append(meta["environment"])
        self._write_meta(old)
        self._env_index = len(environments(old)) - 1

    def set_meta(self, key: str, value: Any) -> None:
        """Record a run-level fact learned while running (calibration, GPU state after the run)."""
        with self._locked():
            meta = _read_json(self.run_path)  # another runner of this run may have added its environment
            meta[key] = value
            self._write_meta(meta)

    def _write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_bytes(self.run_path, (dumps_line(meta, RUN_FILE) + "\n").encode("utf-8"))
        self._meta = meta

    def _has_records(self) -> bool:
        """Any bytes at all count: a file we cannot parse is still not ours to overwrite."""
        try:
            return self.records_path.stat().st_size > 0
        except FileNotFoundError:
            return False

    # locking

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The one lock every writer of this directory takes (appends, claims, run.json)."""
        try:
            with self._lock:
                yield
        except filelock.Timeout as exc:
            raise StoreError(
                f"another process has held {self._lock.lock_file} for over {LOCK_TIMEOUT_S:.0f} s; "
                "check for a hung loadbench process."
            ) from exc

    # appending

    def append(self, record: Mapping[str, Any]) -> bool:
        """Append one record as one fsynced line; False (nothing written) if its key (its cell; in an `ab` run
        its cell, side and round) already has a final one."""
        check_record(record)
        row = dict(record)
        row.setdefault("schema_version", SCHEMA_VERSION)
        if self.run_path.exists():
            row.setdefault("spec_hash", self.meta.get("spec_hash"))
        if self._env_index is not None:
            row.setdefault("env_index", self._env_index)
        line = dumps_line(row, f"the record of cell {row['cell_id']}").encode("utf-8") + b"\n"
        with self._locked():
            if is_final(row) and record_key(row) in self._refresh_final_ids():
                return False
            self._append_line(line)
        return True

    def _append_line(self, line: bytes) -> None:
        """One write on an O_APPEND descriptor, then fsync; the caller holds the lock."""
        created = not self.records_path.exists()
        try:
            fd = os.open(self.records_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                write_all(fd, self._tail_terminator(fd) + line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.directory)
        except OSError as exc:
            raise StoreError(f"could not append to {self.records_path} ({exc.strerror or exc}).") from exc

    @staticmethod
    def _tail_terminator(fd: int) -> bytes:
        """A killed writer may leave a line without its newline; end it so it cannot swallow ours."""
        size = os.fstat(fd).st_size
        if size == 0:
            return b""
        return b"" if os.pread(fd, 1, size - 1) == b"\n" else b"\n"

    def _refresh_final_ids(self) -> set[str]:
        """Read only what was appended since the last look, so an append stays cheap in a long run."""
        try:
            stat = self.records_path.stat()
        except FileNotFoundError:
            return self._final_ids
        if stat.st_ino != self._scanned_inode or stat.st_size < self._scanned:
            self._final_ids, self._scanned, self._scanned_inode = set(), 0, stat.st_ino
        with self.records_path.open("rb") as handle:
            handle.seek(self._scanned)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        for line in complete.split(b"\n"):
            record = parse_line(line)
            if record is not None and is_final(record):
                self._final_ids.add(record_key(record))
        self._scanned += len(complete)
        return self._final_ids

    # claims

    def claim(self, cell_id: str, lease_s: float = DEFAULT_LEASE_S) -> bool:
        """Take a cell (in an `ab` run: a record key) for this process; False if it is done or a live lease
        holds it. A stale lease is taken over, with a note in the cell's log (logs/<cell_id>.log)."""
        path = self.claims_dir / check_cell_id(cell_id)
        with self._locked():
            if cell_id in self._refresh_final_ids():
                return False
            taken, note = take_claim(path, lease_s)
        if note is not None:
            self._note(cell_id, note)
        return taken

    def refresh(self, cell_ids: Iterable[str], lease_s: float = DEFAULT_LEASE_S) -> None:
        """Renew this process's leases on cells still running (the heartbeat other runners check)."""
        with self._locked():
            for cell_id in cell_ids:
                refresh_claim(self.claims_dir / check_cell_id(cell_id), lease_s)

    def _note(self, cell_id: str, note: str) -> None:
        """A line in the cell's log; losing it (full disk) must not stop the run."""
        import datetime as dt

        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        try:
            (self.directory / "logs").mkdir(exist_ok=True)
            with (self.directory / "logs" / f"{cell_id}.log").open("a", encoding="utf-8") as log:
                log.write(f"[loadbench {stamp}] {note}\n")
        except OSError:
            pass

    def release(self, cell_id: str) -> None:
        """Drop our claim on a cell; another process's claim is left alone."""
        path = self.claims_dir / check_cell_id(cell_id)
        with self._locked():
            drop_claim(path)

    # reading

    def records(self) -> list[dict[str, Any]]:
        """Every readable record in file order; torn lines are skipped with a StoreWarning, never raised."""
        try:
            data = self.records_path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline, else a torn last line
        parsed = [parse_line(line) for line in lines if line.strip()]
        kept = [record for record in parsed if record is not None]
        self.skipped_lines = len(parsed) - len(kept) + (1 if tail.strip() else 0)
        warn_skipped(self.records_path, torn_middle=len(parsed) - len(kept), torn_tail=bool(tail.strip()))
        return kept

    def final_cell_ids(self) -> set[str]:
        """Cells resume must not run again (in an `ab` run: record keys, bench.run.records.record_key)."""
        return {record_key(record) for record in self.records() if is_final(record)}


def _new_meta(run_meta: Mapping[str, Any]) -> dict[str, Any]:
    """A private copy of run_meta with the keys resume, merge and readers rely on."""
    missing = [key for key in REQUIRED_META if key not in run_meta]
    if missing:
        raise StoreError(
            f"run_meta lacks {', '.join(missing)}; the runner must provide {', '.join(REQUIRED_META)}."
        )
    if not isinstance(run_meta["spec_hash"], str) or not run_meta["spec_hash"]:
        raise StoreError(f"run_meta spec_hash must be a non-empty string, got {run_meta['spec_hash']!r}.")
    if not isinstance(run_meta["environment"], Mapping):
        raise StoreError("run_meta environment must be a dict of flat fields.")
    meta = finite(copy.deepcopy(dict(run_meta)))
    meta.setdefault("schema_version", SCHEMA_VERSION)
    return meta


def environments(meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every environment that wrote records into a run; a record's `env_index` points into this list."""
    if "environments" in meta:
        return list(meta["environments"])
    return [meta.get("environment", {}), *meta.get("resumed_environments", [])]


# --- merging shard runs ---------------------------------------------------------------------------------


def _env_key(env: Any) -> str:
    return json.dumps(env, sort_keys=True, default=str)


def _merged_meta(stores: list[RunStore]) -> tuple[dict[str, Any], dict[tuple[int, int], int]]:
    """run.json of the merge, and (shard, env_index) -> env_index in the merged environments list."""
    meta = copy.deepcopy(stores[0].meta)
    meta.pop("resumed_environments", None)
    merged: list[dict[str, Any]] = []
    keys: dict[str, int] = {}
    remap: dict[tuple[int, int], int] = {}
    for shard, store in enumerate(stores):
        for index, env in enumerate(environments(store.meta)):
            key = _env_key(env)
            if key not in keys:
                keys[key] = len(merged)
                merged.append(env)
            remap[(shard, index)] = keys[key]
    meta["environment"] = merged[0]
    meta["environments"] = merged
    meta["merged_from"] = [str(store.directory) for store in stores]
    meta["shard"] = None  # the merge holds the union of its shards: cells of a shard not given are missing
    return meta, remap


def _merged_records(
    stores: list[RunStore], remap: dict[tuple[int, int], int]
) -> tuple[list[dict[str, Any]], int]:
    """Final records each shard owns (bench.run.ownership), first one per cell kept; returns them and
    the duplicates dropped."""
    seen: set[str] = set()
    kept: list[dict[str, Any]] = []
    dropped = 0
    for shard, store in enumerate(stores):
        owned = own_records(store.meta, store.records())
        owned.warn(str(store.directory))
        for record in filter(is_final, owned.records):
            if record["cell_id"] in seen:
                dropped += 1
                continue
            seen.add(record["cell_id"])
            record["env_index"] = remap.get((shard, record.get("env_index", 0)), 0)
            kept.append(record)
    return kept, dropped


def _check_same_spec(stores: list[RunStore]) -> None:
    first = stores[0]
    for other in stores[1:]:
        if other.meta.get("spec_hash") != first.meta.get("spec_hash"):
            raise StoreError(
                f"cannot merge {first.directory} and {other.directory}: they ran different specs "
                f"(spec_hash {first.meta.get('spec_hash')!r} vs {other.meta.get('spec_hash')!r})."
            )


def merge(shard_dirs: Iterable[str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> RunStore:
    """Join shard runs of one spec into a new run directory; duplicates are dropped and counted."""
    stores = [RunStore.open(directory) for directory in shard_dirs]
    if not stores:
        raise StoreError("merge needs at least one shard directory.")
    paths = [store.directory.resolve() for store in stores]
    twice = next((path for i, path in enumerate(paths) if path in paths[:i]), None)
    if twice is not None:
        raise StoreError(f"merge was given {twice} more than once; name each shard directory once.")
    out = Path(out_dir)
    if any(store.directory.resolve() == out.resolve() for store in stores):
        raise StoreError(f"merge output {out} is one of its inputs; choose another output directory.")
    _check_same_spec(stores)
    meta, remap = _merged_meta(stores)
    records, duplicates = _merged_records(stores, remap)
    meta["merge_duplicates"] = duplicates
    if (out / RECORDS_FILE).exists() and (out / RECORDS_FILE).stat().st_size > 0:
        raise StoreError(f"merge output {out} already holds records; choose an empty directory.")
    store = RunStore.create(out, meta)
    body = "".join(dumps_line(record, f"the record of cell {record['cell_id']}") + "\n" for record in records)
    with store._locked():
        atomic_write_bytes(store.records_path, body.encode("utf-8"))
    return store
