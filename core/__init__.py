"""VaultMesh Scheduler core: everything needed to run headless."""

import sys

# httpx's package init imports its optional command-line tool (httpx._main) whenever
# rich/click happen to be installed, which would load rich into every headless run.
# Marking that one module absent makes httpx skip it; the HTTP client is unaffected.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None: "not importable"

__version__ = "0.1.0"
