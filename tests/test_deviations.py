"""docs/deviations.md: one five-column table, every issue-#24 item listed, each "ours" citation a line that exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "deviations.md"
COLUMNS = ["aspect", "official (repo:path:line)", "ours (file:line)", "default, and the switch", "changes numbers?"]
CITATION = re.compile(r"(fidelity_lib/[\w/]+\.py):(\d+)")
OFFICIAL = re.compile(r"\b(ST|A&E):[\w./-]+:\d+")
REQUIRED = (  # the differences issue #24 names
    "mixture component", "mixture means", "dropout", "encoder initialisation", "checkpoint", "Objects of a sentence",
    "Local prompt", "A&E precision", "detector", "Captioner", "VSR", "GPT ground truth", "television",
)


def table_rows(text: str) -> list[list[str]]:
    """The cells of each markdown table line, header first, the |---| line left out."""
    lines = [line for line in text.splitlines() if line.startswith("|") and not re.fullmatch(r"\|(-+\|)+", line)]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def test_one_table_of_five_columns_naming_every_item():
    header, *rows = table_rows(DOC.read_text())
    assert header == COLUMNS
    assert rows and all(len(row) == len(COLUMNS) for row in rows), [row[0] for row in rows if len(row) != len(COLUMNS)]
    aspects = " ".join(row[0] for row in rows)
    assert [item for item in REQUIRED if item not in aspects] == []
    assert all(OFFICIAL.search(row[1]) for row in rows), [row[0] for row in rows if not OFFICIAL.search(row[1])]


def test_every_ours_citation_points_to_an_existing_line():
    _, *rows = table_rows(DOC.read_text())
    assert all(CITATION.search(row[2]) for row in rows), [row[0] for row in rows if not CITATION.search(row[2])]
    cited = [match for row in rows for column in row[2:4] for match in CITATION.findall(column)]
    broken = []
    for path, line in cited:
        file = ROOT / path
        if not file.is_file() or not 1 <= int(line) <= len(file.read_text().splitlines()):
            broken.append(f"{path}:{line}")
    assert broken == []


def test_the_parser_reads_cells_and_citations():
    text = "| a | b |\n|---|---|\n| x | fidelity_lib/layout/model.py:9 (and fidelity_lib/x.py:2) |\n"
    assert table_rows(text) == [["a", "b"], ["x", "fidelity_lib/layout/model.py:9 (and fidelity_lib/x.py:2)"]]
    assert CITATION.findall(table_rows(text)[1][1]) == [("fidelity_lib/layout/model.py", "9"), ("fidelity_lib/x.py", "2")]
