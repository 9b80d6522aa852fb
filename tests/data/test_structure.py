"""The shape of fusionkit.data: the registry and the problems module load without validation (the
package-wide rules - no import cycles, modules under 800 lines - are in tests/test_architecture.py)."""

from __future__ import annotations

import subprocess
import sys


def test_registry_and_problems_load_without_validate():
    code = (
        "import sys, fusionkit.data.registry, fusionkit.data.problems; "
        "assert 'fusionkit.data.validate' not in sys.modules, 'registry pulls in validate'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
