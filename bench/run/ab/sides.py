"""The parent's handle on one side of `loadbench ab`: a process of the side's interpreter, with the side's
environment variables, that serves cells from its own warm template (bench.run.ab.side).

Each side runs in a session of its own, so a Ctrl-C at the terminal reaches only the parent, which then
interrupts the side that is measuring (its cell ends `interrupted`, as in `run`) and stops both.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.errors import BenchError
from bench.run.ab.protocol import MODULE, PROTOCOL, decode, encode

__all__ = ["SideError", "SideProcess", "SideSpec"]


class SideError(BenchError):
    """A side that could not start, answered out of protocol, or died: one sentence naming the side."""


@dataclass(frozen=True)
class SideSpec:
    """What makes a side: an interpreter and the environment variables it adds or changes."""

    name: str  # "base" or "new"
    python: str
    env: tuple[tuple[str, str], ...] = ()

    def environment(self, inherited: Mapping[str, str]) -> dict[str, str]:
        return {**inherited, **dict(self.env)}

    def to_dict(self) -> dict[str, Any]:
        return {"python": self.python, "env": dict(self.env)}


@dataclass
class SideProcess:
    """A running side: requests go to its stdin, answers come back on a pipe of their own."""

    spec: SideSpec
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    answers: IO[bytes] | None = None
    buffer: bytes = b""
    ready: dict[str, Any] = field(default_factory=dict)

    def start(self, request: dict[str, Any]) -> None:
        """Start the side's interpreter and send it the run (returns at once: the side imports and plans
        while the other side does the same)."""
        read_fd, write_fd = os.pipe()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            try:
                self.proc = subprocess.Popen(
                    [self.spec.python, "-m", MODULE, str(write_fd)],
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.spec.environment(os.environ),
                    pass_fds=(write_fd,),
                    start_new_session=True,
                )
            except OSError as exc:
                os.close(read_fd)
                os.close(write_fd)
                raise SideError(
                    f"--{self.spec.name} {self.spec.python!r} cannot be started ({exc.strerror or exc}); "
                    "give the path of a Python interpreter that has loadbench installed."
                ) from exc
        os.close(write_fd)
        self.answers = os.fdopen(read_fd, "rb", buffering=0)
        self.send(request)

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(encode(message))
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise self.died("while receiving a request") from None

    def receive(self, timeout_s: float) -> dict[str, Any] | None:
        """The side's next answer; None when none came within `timeout_s`; SideError if it died."""
        assert self.answers is not None
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            readable, _, _ = select.select([self.answers], [], [], left)
            if not readable:
                return None
            chunk = self.answers.read(65536)
            if not chunk:
                raise self.died("before it answered")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            return decode(line)
        except ValueError:
            raise SideError(
                f"the {self.spec.name} side answered out of protocol; its log: {self.log}"
            ) from None

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        """The side's `ready` answer (its plan, versions, template); SideError with its reason otherwise."""
        answer = self.receive(timeout_s)
        if answer is None:
            raise SideError(
                f"the {self.spec.name} side was not ready within {timeout_s:g} s; its log: {self.log}"
            )
        if answer.get("op") == "failed":
            raise SideError(
                f"the {self.spec.name} side ({self.spec.python}) could not start: {answer['message']}"
            )
        if answer.get("op") != "ready" or answer.get("protocol") != PROTOCOL:
            raise SideError(
                f"the {self.spec.name} side speaks ab protocol {answer.get('protocol')!r} and this loadbench "
                f"speaks {PROTOCOL}; install the same loadbench release on both sides' interpreters."
            )
        self.ready = answer
        return answer

    def run(self, cell_id: str, *, first: bool, timeout_s: float) -> dict[str, Any] | None:
        """One cell on this side (`first`: in its first round, when the untimed read-backs run: quality,
        sdpa kernels); its record, or None if no answer came within `timeout_s`."""
        self.send({"op": "run", "cell_id": cell_id, "first": first})
        answer = self.receive(timeout_s)
        if answer is not None and answer.get("op") != "record":
            raise SideError(f"the {self.spec.name} side refused cell {cell_id}: {answer.get('message')}")
        return None if answer is None else answer["record"]

    def interrupt(self, timeout_s: float = 30.0) -> dict[str, Any] | None:
        """Ctrl-C for the side's running cell: its `interrupted` record, if the side answers in time."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        with contextlib.suppress(SideError):
            answer = self.receive(timeout_s)
            if answer is not None and answer.get("op") == "record":
                return answer["record"]
        return None

    def died(self, when: str) -> SideError:
        code = self.proc.poll() if self.proc is not None else None
        how = f"exit code {code}" if code is not None and code >= 0 else f"signal {-(code or 0)}"
        if code is None:
            how = "closed its answers"
        tail = ""
        with contextlib.suppress(OSError):
            lines = self.log.read_text(errors="replace").strip().splitlines()
            tail = f" (last line: {lines[-1][:300]})" if lines else ""
        return SideError(
            f"the {self.spec.name} side's process ended {when} ({how}){tail}; its log: {self.log}"
        )

    def close(self, timeout_s: float = 30.0) -> None:
        """End of input: the side stops its template and exits; killed if it does not within `timeout_s`."""
        if self.proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.answers is not None:
            self.answers.close()
