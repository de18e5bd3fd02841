"""The docs cite tests: every test docs/RELIABILITY.md names as the evidence of a promise exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def defined_tests() -> set[str]:
    names = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        names |= set(re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M))
    return names


def test_every_test_reliability_md_cites_exists():
    cited = set(re.findall(r"\btest_\w+", (ROOT / "docs" / "RELIABILITY.md").read_text()))
    cited = {name for name in cited if not name.endswith("_")}  # prose like "test_*" is not a name
    files = {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    missing = sorted(cited - defined_tests() - files)
    assert missing == []
