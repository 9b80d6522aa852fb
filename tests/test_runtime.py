"""fusionkit.runtime.tune_allocator: glibc malloc settings that remove per-batch page faults.

Each case runs in a fresh interpreter: the settings are process-wide and applied once."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def _run(code: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, check=True, env={**os.environ, **env},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the allocator settings exist on glibc (Linux) only")
def test_tuning_removes_the_page_faults_of_a_cnn_forward():
    """EfficientNet-Lite0 (random init), batch 4 at 224 px, 5 forwards after 2 warm-up ones: with
    glibc's defaults each batch faults its activations in again (~10,000 pages here); tuned, the
    freed activations are reused."""
    code = """
        import json, resource, torch
        from fusionkit.runtime import tune_allocator, allocator_tuned
        if {tune}:
            assert tune_allocator() is True and tune_allocator() is True and allocator_tuned()
        from fusionkit.encoders import build_encoder
        torch.set_num_threads(1)
        enc = build_encoder("image", "efficientnet_lite0", weights=None).eval()
        x = torch.zeros(4, 3, 224, 224, dtype=torch.uint8)
        with torch.inference_mode():
            enc(x), enc(x)
            r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(5):
                enc(x)
        print(json.dumps({{"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0}}))
    """
    default = _run(code.format(tune=False), FUSIONKIT_MALLOC_TUNING="1")["faults"]
    tuned = _run(code.format(tune=True), FUSIONKIT_MALLOC_TUNING="1")["faults"]
    assert default > 5 * 4000, default  # every batch faults its activations in again
    assert tuned < default / 5, (tuned, default)


def test_environment_switch_turns_it_off():
    code = """
        import json
        from fusionkit.runtime import tune_allocator, allocator_tuned
        print(json.dumps({"tuned": tune_allocator(), "state": allocator_tuned()}))
    """
    assert _run(code, FUSIONKIT_MALLOC_TUNING="0") == {"tuned": False, "state": False}
    assert _run(code, FUSIONKIT_MALLOC_TUNING="1") == {"tuned": GLIBC, "state": GLIBC}
