"""Every Python example in README.md and docs/*.md runs as written (each document's blocks in order, in one
fresh process, so that an example registering something cannot touch the other tests), and every name the
documents cite in a file of the package (``(`name` in `src/locallearn/file.py`)``) is defined there."""

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


def cited_names(text: str) -> list[tuple[str, str]]:
    """(name, file) for each ``(... `a` and `B.c` in `path.py`)`` of a document: the names of the clause that
    ends in the file (after the parenthesis's last ';')."""
    text = re.sub(r"\s+", " ", text)
    cited = []
    for clause, path in re.findall(r"\(([^()]*?) in `((?:src/)?locallearn/[\w/]+\.py)`", text):
        for name in re.findall(r"`([A-Za-z_][\w.]*)(?:\(\))?`", clause.split(";")[-1]):
            cited.append((name, path))
    return cited


def test_the_names_the_docs_cite_in_a_file_are_defined_there():
    cited = [(doc.name, name, path) for doc in DOCUMENTS for name, path in cited_names(doc.read_text())]
    assert len(cited) >= 10
    for doc, name, path in cited:
        file = ROOT / (path if path.startswith("src/") else f"src/{path}")
        assert file.is_file(), f"{doc} cites {path}, which does not exist"
        last = name.split(".")[-1]
        defined = rf"^\s*(?:def|class)\s+{last}\b|^\s*(?:self\.)?{last}\s*[:=]"
        assert re.search(defined, file.read_text(), re.M), f"{doc} cites `{name}` in {path}, which does not define it"


def test_a_cited_name_that_is_not_defined_is_found():
    assert cited_names("the cut (`_checkpointed` and `f` in\n`src/locallearn/net.py`); x") == [
        ("_checkpointed", "src/locallearn/net.py"), ("f", "src/locallearn/net.py")]
