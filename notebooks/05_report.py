# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: fidelity-book (.venv)
#     language: python
#     name: fidelity-book
# ---

# %% [markdown]
# # 5. The report: every table and figure, each with the run that made it
#
# The earlier chapters wrote tables (`reports/tables/*.csv`) and figures (`reports/figures/*.png`), each beside a
# provenance record. This chapter gathers them into `reports/README.md`. An artefact without a provenance record is
# not shown: it is listed at the end instead, so a number never appears without the profile and weights that made it.
# Published numbers from the papers appear only where `data/paper_tables.csv` transcribes them; otherwise the report
# says "not transcribed" rather than guessing.

# %% tags=["parameters"]
profile = "smoke"
reports_dir = "../reports"
scale = "paper"  # paper profile: the scale chapters 2 and 4 ran at, named in the tables' provenance ("paper" or "quick")

# %% [markdown]
# ## The papers' tables, in their shape
# One table per paper table: its sets (or, on the toy world, their toy counterparts) by method, its metrics as
# columns, each cell the value with its 95% CI. The cells come from the per-set tables chapter 4 measured
# (`tables/<set>_ci.csv`), where every method of a set is measured on the same (prompt, seed) pairs; the provenance
# lists every source's. A cell behind fewer than 10 prompts shows its value and "too few to compare" instead of a CI,
# and the sentence under each table compares no such cell.

# %%
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from fidelity_lib.book import REPORTS_DIR
from fidelity_lib.chapters import measured_tables, paper_scale
from fidelity_lib.components import resolve_profile
from fidelity_lib.findings import findings_table, update_readme
from fidelity_lib.metrics.summary import PAPER_TABLE_SHAPES, method_verdicts, paper_shaped_table
from fidelity_lib.report import Provenance, build_report, read_provenance, save_table
from fidelity_lib.stable import write_if_changed

reports = Path(reports_dir)
measured = measured_tables(reports / "tables", resolve_profile(profile))  # only this profile's sets
for shape, (caption, _, metrics) in PAPER_TABLE_SHAPES.items():
    table = paper_shaped_table(measured, shape)
    if table.empty:
        print(f"{shape}: no set of this table was measured (run chapter 4 with one of its sets)")
        continue
    names = list(dict.fromkeys(table["set"]))
    sources = [read_provenance(reports / "tables" / f"{name}_ci.csv") for name in names]
    scale_note = f"; {paper_scale(scale).describe()}" if resolve_profile(profile) == "paper" else ""
    provenance = Provenance.combined(sources, notes=f"cells from tables/<set>_ci.csv of {', '.join(names)}{scale_note}")
    summary = method_verdicts(pd.concat(measured[name] for name in names), metrics)
    save_table(table, f"paper_{shape}", provenance, reports, title=caption, summary=summary)
    display(table)
    print(summary)

# %% [markdown]
# ## The report
# `reports/README.md` follows the chapters' order. On the toy world it starts with the findings, the same table as the
# front page of the repository's README: each paper's claim against what the held-out split measured.

# %%
toy_book = resolve_profile(profile) == "toy"
markdown, refused = build_report(reports, headline=findings_table() if toy_book else "")
benchmarks = reports / "benchmarks.md"
if benchmarks.is_file():
    markdown += "\n## Benchmarks\n\nSee [benchmarks.md](benchmarks.md) (each section names its machine and profile).\n"
write_if_changed(reports / "README.md", markdown.encode())
print(f"wrote {reports / 'README.md'}: {markdown.count('### ')} artefacts shown, {len(refused)} refused for missing provenance")
if toy_book and reports.resolve() == REPORTS_DIR:  # the book's own reports: its front page too
    update_readme()  # rewrites the block only when the headline's numbers changed
    print("README.md: its findings table is the toy headline's (headline_paired.csv)")

# %%
display(Markdown(markdown.replace("](figures/", "](../figures/")))  # as seen from <reports>/notebooks/, where the book keeps this notebook
