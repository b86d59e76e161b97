"""What a test needs to run pytest itself in a subprocess."""

from __future__ import annotations

import os


def inner_env() -> dict[str, str]:
    """This environment without the pytest-xdist worker's variables: an inner pytest that inherits
    PYTEST_XDIST_WORKER believes it runs under xdist, and pytest-benchmark then disables itself."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
