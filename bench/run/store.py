"""The results store of one run directory: `run.json`, `records.jsonl` and the claims of live runners.

A run directory must survive a killed process, a full disk and two runners sharing it, because a matrix
can take hours and every finished cell is worth keeping. So: run.json is replaced atomically, each record
is one fsynced line appended with a single write under a file lock, a reader skips the torn line a killed
writer can leave, and a final record is never appended twice for one cell. Shards split cells by their
`cell_id` and merge back by concatenation.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import socket
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FINAL_STATUSES",
    "NON_FINAL_STATUSES",
    "SCHEMA_VERSION",
    "RunStore",
    "StoreError",
    "StoreWarning",
    "environments",
    "merge",
    "parse_shard",
    "read",
    "select_shard",
]

# Bump when the meaning or layout of run.json or a record changes; resume refuses a different version.
SCHEMA_VERSION = 1
FINAL_STATUSES = frozenset({"ok", "skipped", "unsupported", "oom", "timeout", "crashed", "error", "invalid"})
# A cell killed by Ctrl-C: recorded so the user sees it, re-run by resume.
NON_FINAL_STATUSES = frozenset({"interrupted"})
ALL_STATUSES = FINAL_STATUSES | NON_FINAL_STATUSES

RUN_FILE = "run.json"
RECORDS_FILE = "records.jsonl"
LOCK_FILE = "records.jsonl.lock"
CLAIMS_DIR = "claims"
REQUIRED_META = ("spec_hash", "spec", "plan", "environment")
# Writers hold the lock for one short append; a minute of waiting means something is wrong.
LOCK_TIMEOUT_S = 60.0

# cell_id also names a claim file, so it must be a plain file name.
_CELL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHARD = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*")
_HEX = re.compile(r"[0-9a-fA-F]+")


class StoreError(ValueError):
    """A run directory that cannot be used as asked; the message is one sentence a user can act on."""


class StoreWarning(UserWarning):
    """Something in a run directory was skipped (a torn line) but reading went on."""


# --- small file helpers -------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    """Make a created or renamed entry durable: fsyncing a file does not persist its directory entry."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (a full disk, a signal); finish or raise."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` so a reader sees the old bytes or the new, never half of them."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _probe_writable(directory: Path) -> None:
    """Fail before any cell runs, not after an hour of measurements that cannot be saved."""
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"{directory} exists and is not a directory; choose another --out.")
    probe = directory / f".write-probe-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, b"loadbench write probe\n")
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


# --- JSON values ----------------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """NaN and infinity are not JSON; a metric that is not a number is null, as every missing metric is."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _dumps(value: Any, what: str) -> str:
    """One line of strict JSON (no NaN, no raw newlines), or a StoreError naming what failed."""
    try:
        return json.dumps(_finite(value), sort_keys=False, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"{what} cannot be stored as JSON ({exc}); convert values to str, int, float or bool."
        ) from exc


def _check_cell_id(cell_id: object) -> str:
    """A cell_id names a claim file and a shard, so it must be a plain, non-empty file name."""
    if not isinstance(cell_id, str) or not _CELL_ID.fullmatch(cell_id):
        raise StoreError(
            f"cell_id must be a non-empty string of letters, digits, '_', '.' or '-', got {cell_id!r}."
        )
    return cell_id


def _check_record(record: Mapping[str, Any]) -> None:
    """A record without cell_id or a known status could never be resumed, merged or reported."""
    if "cell_id" not in record or "status" not in record:
        raise StoreError(f"a record needs 'cell_id' and 'status'; got keys {sorted(record)}.")
    _check_cell_id(record["cell_id"])
    if record["status"] not in ALL_STATUSES:
        raise StoreError(f"status {record['status']!r} is not one of {sorted(ALL_STATUSES)}.")


def _is_record(value: Any) -> bool:
    """A parsed line counts as a record only if it has the two keys everything downstream relies on."""
    return isinstance(value, dict) and isinstance(value.get("cell_id"), str) and "status" in value


def _parse_line(line: bytes) -> dict[str, Any] | None:
    """One complete line as a record, or None when it is torn or not a record."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if _is_record(value) else None


def _is_final(record: Mapping[str, Any]) -> bool:
    return record.get("status") in FINAL_STATUSES


# --- claims ---------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    """Signal 0 checks existence without touching the process; EPERM still means it exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse_claim(text: str) -> tuple[str, int] | None:
    """`hostname pid`, or None for a claim file cut short by a killed writer (then it is stale)."""
    parts = text.split()
    if len(parts) != 2 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _claim_is_live(owner: tuple[str, int] | None, hostname: str) -> bool:
    """Another host's process cannot be checked from here, so its claim is respected."""
    if owner is None:
        return False
    host, pid = owner
    return host != hostname or _pid_alive(pid)


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
        """An existing run.json: continue it on resume, replace it only if it never produced a record."""
        if resume:
            self._resume(meta)
        elif self._has_records():
            raise StoreError(
                f"{self.directory} already holds a loadbench run with records; pass --resume to continue it "
                "or choose another --out."
            )
        else:
            self._write_meta(meta)
            self._env_index = 0

    def _resume(self, meta: dict[str, Any]) -> None:
        """Same spec only: mixing two specs in one directory would make the results meaningless."""
        old = _read_json(self.run_path)
        if old.get("spec_hash") != meta["spec_hash"]:
            raise StoreError(
                f"cannot resume {self.directory}: it was run with spec_hash {old.get('spec_hash')!r} but this "
                f"spec has spec_hash {meta['spec_hash']!r}; use the original spec or another --out."
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
            meta = copy.deepcopy(self.meta)
            meta[key] = value
            self._write_meta(meta)

    def _write_meta(self, meta: dict[str, Any]) -> None:
        _write_atomic(self.run_path, (_dumps(meta, RUN_FILE) + "\n").encode("utf-8"))
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
        """Append one record as one fsynced line; False (nothing written) if the cell already has a final one."""
        _check_record(record)
        row = dict(record)
        row.setdefault("schema_version", SCHEMA_VERSION)
        if self._env_index is not None:
            row.setdefault("env_index", self._env_index)
        line = _dumps(row, f"the record of cell {row['cell_id']}").encode("utf-8") + b"\n"
        with self._locked():
            if _is_final(row) and row["cell_id"] in self._refresh_final_ids():
                return False
            self._append_line(line)
        return True

    def _append_line(self, line: bytes) -> None:
        """One write on an O_APPEND descriptor, then fsync; the caller holds the lock."""
        created = not self.records_path.exists()
        try:
            fd = os.open(self.records_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                _write_all(fd, self._tail_terminator(fd) + line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.directory)
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
            record = _parse_line(line)
            if record is not None and _is_final(record):
                self._final_ids.add(record["cell_id"])
        self._scanned += len(complete)
        return self._final_ids

    # claims

    def claim(self, cell_id: str) -> bool:
        """Take a cell for this process; False if it is done or a live process holds it."""
        path = self.claims_dir / _check_cell_id(cell_id)
        me = (socket.gethostname(), os.getpid())
        with self._locked():
            if cell_id in self._refresh_final_ids():
                return False
            owner = _parse_claim(path.read_text(encoding="utf-8")) if path.exists() else None
            if owner != me and _claim_is_live(owner, me[0]):
                return False
            self.claims_dir.mkdir(exist_ok=True)
            _write_atomic(path, f"{me[0]} {me[1]}\n".encode())
        return True

    def release(self, cell_id: str) -> None:
        """Drop our claim on a cell; another process's claim is left alone."""
        path = self.claims_dir / _check_cell_id(cell_id)
        with self._locked():
            if path.exists() and _parse_claim(path.read_text(encoding="utf-8")) == (
                socket.gethostname(),
                os.getpid(),
            ):
                path.unlink()

    # reading

    def records(self) -> list[dict[str, Any]]:
        """Every readable record in file order; torn lines are skipped with a StoreWarning, never raised."""
        try:
            data = self.records_path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline, else a torn last line
        parsed = [_parse_line(line) for line in lines if line.strip()]
        kept = [record for record in parsed if record is not None]
        self.skipped_lines = len(parsed) - len(kept) + (1 if tail.strip() else 0)
        _warn_skipped(self.records_path, torn_middle=len(parsed) - len(kept), torn_tail=bool(tail.strip()))
        return kept

    def final_cell_ids(self) -> set[str]:
        """Cells resume must not run again."""
        return {record["cell_id"] for record in self.records() if _is_final(record)}


def _warn_skipped(path: Path, *, torn_middle: int, torn_tail: bool) -> None:
    if torn_tail:
        warnings.warn(
            f"{path}: ignored a torn last line (a partial write from a killed process).",
            StoreWarning,
            stacklevel=3,
        )
    if torn_middle:
        warnings.warn(f"{path}: skipped {torn_middle} unreadable line(s).", StoreWarning, stacklevel=3)


def _new_meta(run_meta: Mapping[str, Any]) -> dict[str, Any]:
    """A private copy of run_meta with the keys resume, merge and read rely on."""
    missing = [key for key in REQUIRED_META if key not in run_meta]
    if missing:
        raise StoreError(
            f"run_meta lacks {', '.join(missing)}; the runner must provide {', '.join(REQUIRED_META)}."
        )
    if not isinstance(run_meta["spec_hash"], str) or not run_meta["spec_hash"]:
        raise StoreError(f"run_meta spec_hash must be a non-empty string, got {run_meta['spec_hash']!r}.")
    if not isinstance(run_meta["environment"], Mapping):
        raise StoreError("run_meta environment must be a dict of flat fields.")
    meta = _finite(copy.deepcopy(dict(run_meta)))
    meta.setdefault("schema_version", SCHEMA_VERSION)
    return meta


def environments(meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every environment that wrote records into a run; a record's `env_index` points into this list."""
    if "environments" in meta:
        return list(meta["environments"])
    return [meta.get("environment", {}), *meta.get("resumed_environments", [])]


# --- shards and merge -----------------------------------------------------------------------------------


def parse_shard(shard: str | tuple[int, int]) -> tuple[int, int]:
    """`"I/N"` or `(I, N)` with 1 <= I <= N, as (I, N)."""
    if isinstance(shard, tuple) and len(shard) == 2 and all(type(part) is int for part in shard):
        index, count = shard
    else:
        match = _SHARD.fullmatch(shard) if isinstance(shard, str) else None
        if match is None:
            raise StoreError(f"--shard must look like I/N with 1 <= I <= N, got {str(shard)!r}.")
        index, count = int(match[1]), int(match[2])
    if not 1 <= index <= count:
        raise StoreError(f"--shard must look like I/N with 1 <= I <= N, got '{index}/{count}'.")
    return index, count


def _cell_id_of(cell: Any) -> str:
    cell_id = cell["cell_id"] if isinstance(cell, Mapping) else cell.cell_id
    return _check_cell_id(cell_id)


def _shard_of(cell_id: str, count: int) -> int:
    """1-based shard of a cell: a pure function of its id, so every host agrees without talking."""
    if not _HEX.fullmatch(cell_id[:12]):
        raise StoreError(f"cell_id {cell_id!r} is not a hex string, so it cannot be assigned to a shard.")
    return int(cell_id[:12], 16) % count + 1


def select_shard(cells: Iterable[Any], shard: str | tuple[int, int]) -> list[Any]:
    """The cells of shard I of N: disjoint across I, together all cells, in their original order."""
    index, count = parse_shard(shard)
    return [cell for cell in cells if _shard_of(_cell_id_of(cell), count) == index]


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
    return meta, remap


def _merged_records(
    stores: list[RunStore], remap: dict[tuple[int, int], int]
) -> tuple[list[dict[str, Any]], int]:
    """Final records of all shards, first one per cell kept; returns them and the duplicates dropped."""
    seen: set[str] = set()
    kept: list[dict[str, Any]] = []
    dropped = 0
    for shard, store in enumerate(stores):
        for record in filter(_is_final, store.records()):
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
    body = "".join(_dumps(record, f"the record of cell {record['cell_id']}") + "\n" for record in records)
    with store._locked():
        _write_atomic(store.records_path, body.encode("utf-8"))
    return store


# --- reading into pandas --------------------------------------------------------------------------------


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become dotted keys, the column names the design promises."""
    flat: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping):
            flat.update(_flatten(item, f"{name}."))
        else:
            flat[name] = item
    return flat


def _latest_per_cell(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest final record of each cell, or its latest non-final one when it never finished."""
    chosen: dict[str, dict[str, Any]] = {}
    for record in records:
        current = chosen.get(record["cell_id"])
        if current is None or _is_final(record) or not _is_final(current):
            chosen[record["cell_id"]] = record
    return list(chosen.values())


def _row(record: dict[str, Any], envs: list[dict[str, Any]]) -> dict[str, Any]:
    """A record's flat columns plus the env.* columns of the environment that wrote it."""
    row = _flatten(record)
    index = row.pop("env_index", 0)
    env = envs[index] if isinstance(index, int) and 0 <= index < len(envs) else envs[0]
    for key, value in _flatten(env, "env.").items():
        row.setdefault(key, value)
    return row


def read(directory: str | os.PathLike[str]) -> pd.DataFrame:
    """One pandas row per cell (its latest final record), with the run's environment as env.* columns."""
    import pandas as pd  # only readers pay for pandas; the runner's hot path does not import it

    store = RunStore.open(directory)
    records = _latest_per_cell(store.records())
    if not records:
        return pd.DataFrame(columns=["cell_id", "status"])
    envs = environments(store.meta) or [{}]
    frame = pd.DataFrame([_row(record, envs) for record in records])
    first = ["cell_id", "status"]
    return frame[first + [column for column in frame.columns if column not in first]]
