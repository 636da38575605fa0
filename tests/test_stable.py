"""Outputs stable across machines: an artefact is rewritten only when its content changes beyond the precision it is
shown at. Perturbed floats stand in for another CPU's float sums."""

import base64
import io
import json
import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nbformat
import numpy as np
import pandas as pd
import pytest

from fidelity_lib.book import REPORTS_DIR, run_book
from fidelity_lib.report import Provenance, save_figure, save_table
from fidelity_lib.stable import (
    MAX_PIXEL_DIFFERENCE, REPO_ROOT, RUN_LOG_TAG, same_image, same_json, same_notebook, same_table, same_text,
    stable_notebook, write_if_changed,
)

PERTURBATION = 1e-9  # relative: far below every shown precision, far above a float's last bit


def perturbed(values: np.ndarray) -> np.ndarray:
    return values * (1 + PERTURBATION * np.linspace(-1, 1, values.size).reshape(values.shape))


def test_text_numbers_match_to_one_unit_of_their_last_shown_digit():
    assert same_text("rate 0.1234 [0.1000, 0.2000]", "rate 0.1235 [0.1000, 0.2000]")
    assert not same_text("rate 0.1234", "rate 0.1236")
    assert not same_text("+3.4 points", "+3.6 points")
    assert same_text("-0.0000", "0.0000")
    assert not same_text("45 repairs", "46 repairs")  # integers are counts, seeds, n: equal or changed
    assert not same_text("presence rises", "presence falls")
    assert same_text("1.5e-05", "1.6e-05") and not same_text("1.5e-05", "1.7e-05")


def test_tables_and_json_match_within_the_tolerance_and_no_further():
    table = pd.DataFrame({"method": ["sd", "ae"], "n": [600, 600], "rate": [0.41234567, 0.45]})
    csv = table.to_csv(index=False).encode()
    nudged = table.assign(rate=perturbed(table["rate"].to_numpy()))
    assert nudged.to_csv(index=False).encode() != csv and same_table(csv, nudged.to_csv(index=False).encode())
    assert not same_table(csv, table.assign(rate=table["rate"] + 2e-4).to_csv(index=False).encode())
    assert not same_table(csv, table.assign(n=[600, 601]).to_csv(index=False).encode())
    assert not same_table(csv, table.assign(method=["sd", "st"]).to_csv(index=False).encode())
    cells = pd.DataFrame({"rate": ["0.562 [0.312, 0.875]"]}).to_csv(index=False).encode()
    assert same_table(cells, pd.DataFrame({"rate": ["0.563 [0.313, 0.875]"]}).to_csv(index=False).encode())
    assert not same_table(cells, pd.DataFrame({"rate": ["0.600 [0.312, 0.875]"]}).to_csv(index=False).encode())
    assert same_json(json.dumps({"x": [0.5, float("nan")]}).encode(), json.dumps({"x": [0.5 + 1e-9, float("nan")]}).encode())
    assert not same_json(json.dumps({"x": 0.5}).encode(), json.dumps({"x": 0.51}).encode())


def line_figure(values: np.ndarray):
    figure, axis = plt.subplots(figsize=(3, 2))
    axis.plot(values)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=60)
    plt.close(figure)
    return buffer.getvalue()


def test_images_match_within_a_few_pixel_values_and_no_further():
    values = np.linspace(0, 1, 20) ** 2
    png = line_figure(values)
    assert same_image(png, line_figure(perturbed(values)))
    assert not same_image(png, line_figure(values[::-1]))
    pixels = np.asarray(plt.imread(io.BytesIO(png), format="png"))
    shifted = (pixels * 255).astype(np.uint8)
    shifted[0, 0, 0] = (int(shifted[0, 0, 0]) + MAX_PIXEL_DIFFERENCE + 1) % 256
    buffer = io.BytesIO()
    plt.imsave(buffer, shifted, format="png")
    assert not same_image(png, buffer.getvalue())


def test_write_if_changed_keeps_the_file_when_the_content_is_the_same(tmp_path):
    path = tmp_path / "t.md"
    assert write_if_changed(path, b"rate 0.1234\n")
    assert not write_if_changed(path, b"rate 0.1235\n") and path.read_bytes() == b"rate 0.1234\n"
    assert write_if_changed(path, b"rate 0.1300\n") and path.read_bytes() == b"rate 0.1300\n"


def test_saved_tables_and_figures_keep_their_bytes_under_perturbed_floats(tmp_path):
    provenance = Provenance(profile="toy", weights="w")
    values = np.array([0.123456789, 0.5, 0.987654321])
    for attempt, numbers in enumerate((values, perturbed(values))):
        save_table(pd.DataFrame({"x": numbers}), "t", provenance, tmp_path, summary=f"mean {numbers.mean():.4f}")
        figure, axis = plt.subplots(figsize=(3, 2))
        axis.plot(numbers)
        save_figure(figure, "f", provenance, tmp_path)
        plt.close(figure)
        if attempt == 0:
            first = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == first


def executed(outputs_by_cell: list[list], tags: list[list[str]] | None = None) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["papermill"] = {"start_time": "2026-12-06T01:00:00", "duration": 3.2}
    for n, outputs in enumerate(outputs_by_cell):
        cell = nbformat.v4.new_code_cell(f"cell_{n}()", outputs=outputs)
        cell.metadata["papermill"] = {"duration": 0.1 * n}
        cell.metadata["tags"] = (tags or [[]] * len(outputs_by_cell))[n]
        notebook.cells.append(cell)
    return notebook


def stream(text: str, name: str = "stdout") -> nbformat.NotebookNode:
    return nbformat.v4.new_output("stream", name=name, text=text)


def test_stable_notebook_drops_run_metadata_stderr_and_the_checkouts_path():
    raw = executed([[stream("10%|#  | 1/10 [00:01<00:09, 1.1s/it]", "stderr"), stream(f"wrote {REPO_ROOT}/reports/README.md")]])
    raw.cells.insert(0, nbformat.v4.new_code_cell(f'reports_dir = "{REPO_ROOT}/reports"', metadata={"tags": ["injected-parameters"]}, id="c0ffee00"))
    stable = nbformat.reads(stable_notebook(nbformat.writes(raw).encode()).decode(), as_version=4)
    assert "papermill" not in stable.metadata and "papermill" not in stable.cells[1].metadata
    assert [output.text for output in stable.cells[1].outputs] == ["wrote reports/README.md"]
    assert (stable.cells[0].id, stable.cells[0].source) == ("injected-parameters", 'reports_dir = "reports"')  # any checkout


def test_notebooks_compare_outputs_under_the_rules_and_skip_run_logs():
    def notebook(rate: str, seconds: str, png: bytes) -> bytes:
        image = nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"})
        cells = [[stream(f"rate {rate}")], [stream(f"24 written in {seconds} s")], [image]]
        return stable_notebook(nbformat.writes(executed(cells, [[], [RUN_LOG_TAG], []])).encode())

    values = np.linspace(0, 1, 20) ** 2
    first = notebook("0.1234", "6.6", line_figure(values))
    assert same_notebook(first, notebook("0.1235", "9.1", line_figure(perturbed(values))))
    assert not same_notebook(first, notebook("0.2234", "6.6", line_figure(values)))
    assert not same_notebook(first, notebook("0.1234", "6.6", line_figure(values[::-1])))


def perturb_tables(tables_dir) -> int:
    """Nudge every float of every CSV chapter 5 reads (not its own paper_* tables) by PERTURBATION (relative):
    another machine's float sums."""
    changed = 0
    for path in sorted(path for path in tables_dir.glob("*.csv") if not path.name.startswith("paper_")):
        table = pd.read_csv(path, keep_default_na=False, na_values=[""])
        floats = table.select_dtypes("float").columns
        if len(floats):
            table[floats] = perturbed(table[floats].to_numpy())
            path.write_text(table.to_csv(index=False))
            changed += 1
    return changed


@pytest.mark.slow
def test_a_chapter_run_twice_with_perturbed_floats_changes_no_byte(tmp_path):
    """Chapter 5 on a copy of the committed reports; then every float its input tables hold is nudged, as another
    CPU would, and the chapter runs again: nothing it writes may change."""
    out = tmp_path / "reports"
    for name in ("tables", "figures"):
        shutil.copytree(REPORTS_DIR / name, out / name)
    shutil.copy(REPORTS_DIR / "benchmarks.md", out / "benchmarks.md")
    run_book("smoke", out=out, only="05_report")
    written = ["README.md", "notebooks/05_report.ipynb", *(path.relative_to(out).as_posix() for path in (out / "tables").glob("paper_*"))]
    first = {name: (out / name).read_bytes() for name in written}
    assert len(first) >= 5 and perturb_tables(out / "tables") >= 5
    run_book("smoke", out=out, only="05_report")
    assert {name: (out / name).read_bytes() for name in written} == first
