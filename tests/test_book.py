import json
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

from fidelity_lib.book import NOTEBOOKS_DIR, NotebookFailed, book_notebooks, run_book

FIRST = """# %% tags=["parameters"]
profile = "none"
reports_dir = "."

# %%
from pathlib import Path
Path(reports_dir, "order.txt").open("a").write(f"first {profile}\\n")
"""
SECOND = """# %% tags=["parameters"]
profile = "none"
reports_dir = "."
fail = False

# %%
from pathlib import Path
Path(reports_dir, "order.txt").open("a").write(f"second {profile}\\n")
assert not fail, "asked to fail"
"""


def write_pair(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(source)
    notebook = jupytext.reads(source, fmt="py:percent")
    notebook.metadata["jupytext"] = {"formats": "ipynb,py:percent"}
    jupytext.write(notebook, folder / f"{name}.ipynb")


@pytest.fixture
def fixture_book(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_pair(notebooks, "10_second", SECOND)
    write_pair(notebooks, "01_first", FIRST)
    (notebooks / "scratch.ipynb").write_text("not a book notebook")
    return notebooks


def test_runs_notebooks_in_number_order_with_parameters(fixture_book, tmp_path):
    out = tmp_path / "reports"
    runs = run_book("tiny", out=out, notebooks_dir=fixture_book)
    assert [run.notebook.name for run in runs] == ["01_first.ipynb", "10_second.ipynb"]
    assert (out / "order.txt").read_text() == "first tiny\nsecond tiny\n"
    assert all(run.executed_path.exists() for run in runs)


def test_failing_cell_stops_the_book_and_keeps_the_notebook(fixture_book, tmp_path):
    out = tmp_path / "reports"
    third = SECOND.replace("second", "third")
    write_pair(fixture_book, "20_third", third)
    with pytest.raises(NotebookFailed) as failure:
        run_book("tiny", out=out, notebooks_dir=fixture_book, extra_parameters={"fail": True})
    kept = failure.value.executed_path
    assert kept.name == "10_second.ipynb" and kept.exists()
    assert "asked to fail" in json.dumps(nbformat.read(kept, as_version=4).cells[-1].get("outputs", []))
    assert (out / "order.txt").read_text() == "first tiny\nsecond tiny\n"  # the third never ran


def test_cli_exits_nonzero_and_prints_the_kept_path(fixture_book, tmp_path):
    (fixture_book / "10_second.py").write_text(SECOND.replace("fail = False", "fail = True"))
    (fixture_book / "10_second.ipynb").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "fidelity_lib.book", "--notebooks", str(fixture_book), "--out", str(tmp_path / "r")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert str(tmp_path / "r" / "notebooks" / "10_second.ipynb") in result.stderr


def test_every_book_notebook_has_parameters_cell_profile_and_a_synced_pair():
    notebooks = book_notebooks()
    assert notebooks, "the book has no notebooks"
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        parameter_cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(parameter_cells) == 1, path.name
        assert "profile" in parameter_cells[0].source and "reports_dir" in parameter_cells[0].source, path.name
        assert notebook.metadata["kernelspec"]["name"] == "fidelity-book", path.name
        twin = jupytext.read(path.with_suffix(".py"))
        assert [c.source for c in twin.cells] == [c.source for c in notebook.cells], f"{path.name} and its .py differ"


@pytest.mark.slow
def cells_follow_the_n_rule(cells, prompts) -> bool:
    """Paper-shaped cells: a CI from 10 prompts on, "too few to compare" under 10, "n/a" where nothing was measured."""
    import re

    return all(
        cell == "n/a" or re.fullmatch(r"[01]\.\d{3} \[[01]\.\d{3}, [01]\.\d{3}\]" if n >= 10 else r"[01]\.\d{3} \(\d+ prompts?: too few to compare\)", cell)
        for cell, n in zip(cells, prompts)
    )


def test_smoke_book(tmp_path):
    """The whole book in the smoke profile runs, on the toy world's counterparts of the paper sets, and rebuilds the
    papers' tables in their shape from what it measured, every artefact with its provenance."""
    import json

    import pandas as pd

    from fidelity_lib.components import resolve_profile

    reports = tmp_path / "reports"
    runs = run_book("smoke", out=reports, notebooks_dir=NOTEBOOKS_DIR)
    assert len(runs) == len(book_notebooks())
    records = [json.loads(path.read_text()) for path in reports.glob("*/*.provenance.json")]
    assert records and all(record["weights"] and record["commit"] for record in records)
    assert {record["profile"] for record in records} <= {"toy", "tiny"}  # the profile that ran, never "smoke"
    if resolve_profile("smoke") != "toy":
        return
    ae = pd.read_csv(reports / "tables" / "paper_attend_excite.csv")
    assert set(ae["set"]) == {"toy_ae_shape_shape", "toy_ae_shape_object", "toy_ae_object_object"}
    assert set(ae["method"]) == {"sd", "ae", "st", "st+ae"} and cells_follow_the_n_rule(ae["clip_min_object"], ae["prompts"])
    st = pd.read_csv(reports / "tables" / "paper_spatial_temporal.csv", keep_default_na=False)  # keep "n/a" cells
    gpt = st[st["set"] == "toy_gpt"]
    assert {"toy_gpt", "toy_mscoco"} <= set(st["set"]) and cells_follow_the_n_rule(gpt["relation_accuracy"], gpt["prompts"])
    assert (gpt["relation_accuracy"] != "n/a").any()  # relations are measured where both objects were found
    comparisons = pd.read_csv(reports / "tables" / "toy_headline_comparisons.csv")  # chapter 4's paired differences
    assert (comparisons["pairs"] >= 200).all() and {"toy_gpt", "toy_ae_object_object"} <= set(comparisons["set"])
    coco = json.loads((reports / "tables" / "toy_mscoco.provenance.json").read_text())
    assert "toy counterpart of mscoco" in coco["notes"] and "toy world: not Stable Diffusion" in coco["line"]
    assert (reports / "figures" / "02_generate_ae_grid_toy_ae_object_object.png").is_file()


def test_a_paper_run_with_missing_components_stops_before_writing_anything(tmp_path):
    """The preflight lists every missing component with its download command and the run writes no report file."""
    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    out = tmp_path / "reports-paper"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "fidelity_lib.book", "--profile", "paper", "--weights", "/nonexistent",
         "--coco-dir", "/nonexistent", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    for component in ("Stable Diffusion", "ViT-B/16", "ViT-B/32", "BLIP", "RT-DETR", "roberta-base", "COCO"):
        assert component in result.stdout + result.stderr, component
    assert "download" in result.stdout + result.stderr
    assert not out.exists()


def test_chapters_get_the_run_parameters_they_declare(tmp_path):
    from fidelity_lib.book import chapter_parameters

    notebook = NOTEBOOKS_DIR / "04_eval.ipynb"
    run = {"weights": "/w", "coco_dir": "/c", "captioner": "lavis", "scale": "quick"}
    chapter = chapter_parameters(notebook, "paper", tmp_path, run)
    assert chapter["weights"] == "/w" and chapter["captioner"] == "lavis" and chapter["scale"] == "quick"
    assert "coco_dir" not in chapter  # chapter 4 does not declare it
    assert set(chapter["dataset"]) == {"ae_animal_animal", "ae_animal_object", "ae_object_object", "gpt", "mscoco", "vsr"}
    assert chapter["limit"] is None
    layout = chapter_parameters(NOTEBOOKS_DIR / "01_layout.ipynb", "paper", tmp_path, run)
    assert layout["coco_dir"] == "/c" and "captioner" not in layout
