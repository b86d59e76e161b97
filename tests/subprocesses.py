"""What the tests' own subprocesses need: Ctrl-C back, and an environment for an inner pytest."""

from __future__ import annotations

import os
import signal


def interruptible() -> None:
    """Run in the child before exec: Ctrl-C's default action back. A shell without job control starts a
    background command (this suite, say) with SIGINT ignored; every child inherits that, and Python then
    installs no KeyboardInterrupt handler, so a test's SIGINT would go unheard."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def inner_env() -> dict[str, str]:
    """This environment without the pytest-xdist worker's variables: an inner pytest that inherits
    PYTEST_XDIST_WORKER believes it runs under xdist, and pytest-benchmark then disables itself."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
