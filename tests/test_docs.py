"""Every Python example in README.md and docs/*.md runs as written (each document's blocks in order, in one
fresh process, so that an example registering something cannot touch the other tests)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_the_docs_have_examples():
    assert sum(len(blocks(p)) for p in DOCUMENTS) >= 5
    assert blocks(ROOT / "README.md") and blocks(ROOT / "docs" / "custom-models.md")


@pytest.mark.parametrize("path", [p for p in DOCUMENTS if blocks(p)], ids=lambda p: p.name)
def test_python_examples_run(path, tmp_path):
    program = "\n\n".join(blocks(path))
    script = tmp_path / f"{path.stem}.py"
    script.write_text(program)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"{path.name}:\n{proc.stderr[-3000:]}"
