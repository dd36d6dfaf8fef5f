"""docs/: every covsim name the pages mention exists, and the pages whose examples say they
run as written do run (each page's ```python blocks in order, in a fresh interpreter, so a
page's registrations do not leak into the other tests)."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.glob("*.md"))
RUNNABLE = ["api.md", "extending.md"]  # pages whose every python block runs as written
NAME = re.compile(r"`(covsim(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def _resolve(dotted: str):
    """The object a dotted name denotes: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_the_pages_exist_and_name_real_functions():
    assert {"getting-started.md", "results.md", "api.md", "extending.md", "claims.md"} <= {
        p.name for p in PAGES}
    names = sorted({m for p in PAGES for m in NAME.findall(p.read_text("utf-8"))})
    assert len(names) > 40
    missing = []
    for n in names:
        try:
            _resolve(n)
        except (ImportError, AttributeError):
            missing.append(n)
    assert not missing, f"docs name what does not exist: {missing}"


@pytest.mark.parametrize("page", RUNNABLE)
def test_the_examples_run(page, tmp_path):
    text = (DOCS / page).read_text("utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)
    assert blocks
    script = tmp_path / "page.py"
    script.write_text("\n".join(blocks))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
