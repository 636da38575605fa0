"""The evaluation chapter runs under papermill in the smoke profile and writes its table and figure."""

import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "04_eval.ipynb"


@pytest.mark.slow
def test_eval_notebook_generates_images_and_writes_table_and_figure(tmp_path):
    command = [
        sys.executable, "-m", "papermill", str(NOTEBOOK), str(tmp_path / "out.ipynb"), "-p", "dataset", "mscoco",
        "-p", "profile", "smoke", "-p", "reports_dir", str(tmp_path / "reports"), "-p", "images_dir", str(tmp_path / "images"),
        "-p", "seeds", "0", "-p", "limit", "2", "-p", "steps", "2", "-p", "n_boot", "200",
    ]
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True)
    table = (tmp_path / "reports" / "tables" / "mscoco.md").read_text()
    assert "object_accuracy" in table and "Provenance: profile smoke" in table and "detector " in table
    assert (tmp_path / "reports" / "figures" / "mscoco_metrics.png").stat().st_size > 0
    assert (tmp_path / "reports" / "metrics" / "mscoco" / "ae" / "clip_aggregated_metrics.json").exists()
    assert len(list((tmp_path / "images" / "sd").iterdir())) == 2
