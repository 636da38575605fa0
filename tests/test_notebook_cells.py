"""Notebooks read as chapters: no code cell of a ``notebooks/*.py`` holds more than 15 lines of logic, the rest lives in
fidelity_lib. A line of logic is non-blank, not a comment and not an ``import``/``from ... import`` line. The parameters
cell declares the chapter's inputs, one per line, and is not logic. Reads the jupytext py:percent files only (no
notebook runs)."""

import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
MAX_LOGIC_LINES = 15
CELL_MARKER = re.compile(r"^# %%.*$", re.MULTILINE)
IMPORT_LINE = re.compile(r"^(import|from)\s")


def code_cells(text: str) -> list[tuple[int, str]]:
    """(cell number, source) of each code cell; cell 1 is the first block after the header, markdown counted too."""
    markers, bodies = CELL_MARKER.findall(text), CELL_MARKER.split(text)[1:]
    return [(number, body) for number, (marker, body) in enumerate(zip(markers, bodies), 1)
            if "[markdown]" not in marker and "parameters" not in marker]


def logic_lines(source: str) -> int:
    """Non-blank lines that are neither comments nor import lines."""
    stripped = (line.strip() for line in source.splitlines())
    return sum(1 for line in stripped if line and not line.startswith("#") and not IMPORT_LINE.match(line))


def test_the_count_follows_its_definition():
    text = "# header\n\n# %% [markdown]\n# text\n\n# %%\nimport os\nfrom a import b\n\n# note\nx = 1\nif x:\n    y = 2\n"
    assert code_cells(text) == [(2, "\nimport os\nfrom a import b\n\n# note\nx = 1\nif x:\n    y = 2\n")]
    assert logic_lines(code_cells(text)[0][1]) == 3


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.py")), ids=lambda path: path.name)
def test_no_code_cell_holds_more_than_15_lines_of_logic(path):
    counts = [(number, logic_lines(source)) for number, source in code_cells(path.read_text())]
    too_long = [f"{path.name} cell {number}: {count} lines" for number, count in counts if count > MAX_LOGIC_LINES]
    assert not too_long, f"more than {MAX_LOGIC_LINES} lines of logic (move it into fidelity_lib): " + "; ".join(too_long)
