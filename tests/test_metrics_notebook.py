"""The evaluation chapter runs under papermill in the smoke profile and writes its table and figure."""

import subprocess
import sys
from pathlib import Path

import pytest

from fidelity_lib.components import resolve_profile
from fidelity_lib.datasets import set_for_profile

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "04_eval.ipynb"


@pytest.mark.slow
def test_eval_notebook_generates_images_and_writes_table_and_figure(tmp_path):
    command = [
        sys.executable, "-m", "papermill", str(NOTEBOOK), str(tmp_path / "out.ipynb"), "-p", "dataset", "mscoco",
        "-p", "profile", "smoke", "-p", "reports_dir", str(tmp_path / "reports"), "-p", "images_dir", str(tmp_path / "images"),
        "-p", "seeds", "0", "-p", "limit", "2", "-p", "steps", "2", "-p", "n_boot", "200",
    ]
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True)
    scored = set_for_profile("mscoco", resolve_profile("smoke"))  # toy_mscoco on the toy world
    table = (tmp_path / "reports" / "tables" / f"{scored}.md").read_text()
    assert "object_accuracy" in table and f"Provenance: profile {resolve_profile('smoke')}" in table and "detector " in table
    assert "requested profile smoke" in table
    assert (scored == "mscoco") == ("toy counterpart of mscoco" not in table)
    assert (tmp_path / "reports" / "figures" / f"{scored}_metrics.png").stat().st_size > 0
    assert (tmp_path / "reports" / "metrics" / scored / "ae" / "clip_aggregated_metrics.json").exists()
    assert len(list((tmp_path / "images" / "sd").iterdir())) == 2


@pytest.mark.slow
def test_an_unknown_dataset_is_refused_with_the_valid_names(tmp_path):
    command = [sys.executable, "-m", "papermill", str(NOTEBOOK), str(tmp_path / "out.ipynb"), "-p", "dataset", "coco",
               "-p", "reports_dir", str(tmp_path / "reports")]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode != 0 and "Unknown prompt set 'coco'" in run.stderr and "toy_mscoco" in run.stderr
