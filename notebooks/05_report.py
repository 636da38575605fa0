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

# %%
from pathlib import Path

from IPython.display import Markdown, display

from fidelity_lib.files import atomic_write_bytes
from fidelity_lib.report import build_report

reports = Path(reports_dir)
markdown, refused = build_report(reports)
benchmarks = reports / "benchmarks.md"
if benchmarks.is_file():
    markdown += "\n## Benchmarks\n\nSee [benchmarks.md](benchmarks.md) (each section names its machine and profile).\n"
atomic_write_bytes(reports / "README.md", markdown.encode())
print(f"wrote {reports / 'README.md'}: {markdown.count('### ')} artefacts shown, {len(refused)} refused for missing provenance")

# %%
display(Markdown(markdown.replace("](figures/", f"]({reports.resolve()}/figures/")))
