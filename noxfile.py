"""Developer sessions: tests (fast), slow, lint, typecheck (mypy), perf (pytest-benchmark), gpu (CUDA only)."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

# torch==2.13.0 first: a bare torch requirement would pull a multi-GB CUDA build on CPU machines.
TORCH = "torch==2.13.0"


def _install(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[dev,quant]")  # quant: the on-the-fly quantizers' tests run, not skip


@nox.session
def tests(session: nox.Session) -> None:
    """The fast unit and integration tests (CPU, offline): pyproject deselects `slow` and `perf`."""
    _install(session)
    session.run("pytest", "-q", *session.posargs)


@nox.session
def slow(session: nox.Session) -> None:
    """The `slow` tests: Ray, real-shape checkpoints, flex_attention, CLI subprocess runs (CI's second step)."""
    _install(session)
    session.install("-e", ".[dev,ray,quant]")
    # Exit 5 is "no tests collected" (e.g. a -k that matches none): nothing failed.
    # Two workers (pytest-xdist): the tests wait on subprocesses of one thread each; `loadgroup` keeps
    # the Ray clusters on one worker and the default run's module on one.
    session.run(
        "pytest", "-q", "-m", "slow", "-n", "2", "--dist", "loadgroup", *session.posargs, success_codes=[0, 5]
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: the lint rules and the format."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the packages pyproject's [tool.mypy] names (loader, bench)."""
    _install(session)
    session.run("mypy")


@nox.session
def perf(session: nox.Session) -> None:
    """Benchmarks (pytest-benchmark): targets live here, not in timed unit tests.

    tests/perf/test_accounting_perf.py prints the 4-cell sweep's time accounting and, with LOADBENCH_OB_PYTHON
    pointing at a venv that has optimum-benchmark==0.6.0, the ratio to it (docs/architecture.md, "Against optimum-benchmark").
    """
    _install(session)
    session.run(
        "pytest",
        "-q",
        "-m",
        "perf",
        "--benchmark-enable",
        "--benchmark-only",
        "--benchmark-json",
        "perf.json",
        *session.posargs,
    )


@nox.session
def gpu(session: nox.Session) -> None:
    """The `gpu` preset on a CUDA host (install the CUDA build of torch you want first)."""
    session.install("-e", ".[dev,quant]")  # quant: torchao / HQQ / quanto / FP8 cells run, not skip
    has_cuda = session.run("python", "-c", "import torch; print(torch.cuda.is_available())", silent=True)
    if "True" not in str(has_cuda):
        session.skip("no CUDA GPU on this host; `nox -s gpu` runs the gpu preset on one")
    preset = session.posargs[0] if session.posargs else "gpu"
    session.run("loadbench", "run", "--preset", preset, "--out", f"runs/{preset}", "--no-live")
