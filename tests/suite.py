"""How thorough this run of the suite is. `make test` samples the long matrices (two signal moments, one
torchrun launch, hypothesis's dev profile, no torch.compile); with CI=true (.ci/run) every one runs in full.

A test that belongs to a matrix is marked `thorough` (or one of its parameters is): collected either way,
skipped outside CI with a reason that says so. Property tests size themselves with `examples(n)`.
"""

from __future__ import annotations

import os

THOROUGH = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
SKIP_REASON = "thorough matrix: runs with CI=true (CI=true make test), sampled in a plain make test"


def examples(n: int) -> int:
    """Hypothesis examples for a property test declared with `n` in the full run: all of them in CI,
    a fifth (at least 10) otherwise; every example is still a real check of the property."""
    return n if THOROUGH else max(10, n // 5)
