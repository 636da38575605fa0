"""The README's front page: each paper's claim, what the toy world measured on its held-out split, and the paper
profile's status, written from the headline's paired table and the committed tables' provenance (never typed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from fidelity_lib.files import atomic_write_bytes
from fidelity_lib.report import REPO_ROOT
from fidelity_lib.toyworld.calibration import CHOSEN_AE, CHOSEN_ST
from fidelity_lib.toyworld.experiment import METRIC_WORDS, RESULTS_DIR, points_with_ci

README = REPO_ROOT / "README.md"
START, END = "<!-- findings:start -->", "<!-- findings:end -->"
# (paper, its claim, [(toy set, setting, method, metric)]): the comparisons each claim is tested on, against plain SD
CLAIMS = [
    ("Attend-and-Excite", "exciting the most neglected subject token brings back objects SD leaves out",
     [("toy_ae_object_object", CHOSEN_AE, "ae", "all_present")]),
    ("Spatial-temporal control", "a predicted layout plus regional attention raises spatial-relation accuracy",
     [("toy_gpt", CHOSEN_ST, "st", "relation_correct"), ("toy_gpt", CHOSEN_ST, "st", "all_present"),
      ("toy_ae_object_object", CHOSEN_ST, "st", "all_present")]),
    ("Both together (this book's extension)", "does A&E on top of ST keep both gains?",
     [("toy_gpt", f"{CHOSEN_ST}+{CHOSEN_AE}", "st+ae", "relation_correct"),
      ("toy_ae_object_object", f"{CHOSEN_ST}+{CHOSEN_AE}", "st+ae", "all_present")]),
]


def measured_cell(paired: pd.DataFrame, set_name: str, setting: str, method: str, metric: str) -> str:
    """'ae vs sd on <set>, presence of every object: +3.4 [+0.9, +5.9] points, 648 pairs, 45 repaired / 23 broken'."""
    rows = paired[(paired["set"] == set_name) & (paired["setting"] == setting) & (paired["metric"] == metric)]
    name = f"{method} vs sd on {set_name}, {METRIC_WORDS[metric]}"
    if rows.empty:
        return f"{name}: not measured yet (the held-out headline run has not reached it)"
    row = rows.iloc[0]
    return f"{name}: {points_with_ci(row)} points, {row['n_pairs']} pairs, {row['repairs']} repaired / {row['breakages']} broken"


def paper_status(tables_dir: Path) -> str:
    """Whether a paper-profile run's tables are committed, from their provenance records."""
    records = [json.loads(path.read_text()) for path in sorted(tables_dir.glob("paper_*.provenance.json"))]
    if any(record.get("profile") == "paper" for record in records):
        return "measured on real weights: `reports/tables/paper_*.md`"
    return "not run on real weights yet (it needs a GPU: `python -m fidelity_lib.book --profile paper`)"


def findings_table(paired_csv: Path = RESULTS_DIR / "headline_paired.csv", tables_dir: Path = REPO_ROOT / "reports" / "tables") -> str:
    """The findings table: per paper its claim, the toy world's held-out paired differences, the paper profile's status."""
    paired = pd.read_csv(paired_csv)
    status = paper_status(tables_dir)
    lines = ["| paper | claim | toy world, held-out split (paired 95% bootstrap CI) | paper profile |", "|---|---|---|---|"]
    for paper, claim, comparisons in CLAIMS:
        measured = "<br>".join(measured_cell(paired, *comparison) for comparison in comparisons)
        lines.append(f"| {paper} | {claim} | {measured} | {status} |")
    return "\n".join(lines)


def update_readme(readme: Path = README, table: str | None = None) -> bool:
    """Replace the findings block of the README with ``findings_table()``; True when it changed."""
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r"\n(?:.*?\n)?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no findings block: put '{START}' and '{END}' on their own lines where it goes.")
    new = pattern.sub(lambda _: f"{START}\n{table or findings_table()}\n{END}", text)
    if new == text:
        return False
    atomic_write_bytes(readme, new.encode("utf-8"))
    return True
