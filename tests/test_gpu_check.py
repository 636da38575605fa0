"""benchmarks/gpu_check.py: its dry run writes a complete section with numbers, and a rewrite replaces only its section."""

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
START, END = "<!-- gpu_check:start -->", "<!-- gpu_check:end -->"
IMAGE_NUMBERS = ("seconds", "time / plain", "peak GB", "peak / plain", "above weights GB")
SD_ROWS = ("plain SD", "ours A&E, refinement off", "ours A&E, refinement at its maximum", "diffusers A&E, refinement off",
           "diffusers A&E, refinement at its maximum", "ST, checkpointing, 3 passes")
SDXL_ROWS = ("plain SDXL", "ours A&E, refinement off", "ours A&E, refinement at its maximum")
COMPONENT_NUMBERS = ("weights GB", "prompt encoding ms", "UNet CFG call ms", "UNet call above weights GB", "VAE decode ms",
                     "decode above weights GB")


def tables(section: str) -> list[list[dict[str, str]]]:
    """Each markdown table of ``section`` as its rows, each {header: cell}."""
    found, header = [], None
    for line in section.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if header is None:
            header = cells
            found.append([])
        elif set(line) - set("|-"):
            found[-1].append(dict(zip(header, cells, strict=True)))
    return found


def numbers(row: dict[str, str], columns: tuple[str, ...]) -> list[float]:
    return [float(row[column]) for column in columns]


@pytest.mark.slow
def test_the_dry_run_writes_every_measurement_with_numbers(tmp_path):
    out = tmp_path / "benchmarks.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text()
    assert text.count(START) == text.count(END) == 1
    section = text[text.index(START):text.index(END)]
    assert "dry run (CPU, tiny)" in section and "finished in" in section
    assert not any(word in section for word in ("not reached", "skipped for time", "cut at the time budget", "failed"))

    sd, batches, sdxl, components, parity = tables(section)
    for rows, labels in ((sd, SD_ROWS), (sdxl, SDXL_ROWS)):
        by_label = {row["method"]: row for row in rows}
        assert list(by_label) == list(labels)
        for row in rows:
            assert all(value > 0 for value in numbers(row, IMAGE_NUMBERS)), row
        assert by_label[labels[0]]["time / plain"] == "1.00"
        assert by_label["ours A&E, refinement off"]["refinement iterations per threshold step"] == "none"
        assert by_label["ours A&E, refinement at its maximum"]["refinement iterations per threshold step"] == "0: 20"
    assert [row["batch"] for row in batches] == ["1", "2"]
    for row in batches:
        assert all(value > 0 for value in numbers(row, ("seconds", "images / s", "images / s over plain SD's", "peak GB")))
    assert [(row["model"], row["dtype"], row["side"]) for row in components] == [
        (model, dtype, side) for model in ("SD v1.4", "SDXL base 1.0") for dtype in ("fp16", "fp32") for side in ("32", "64")
    ]
    for row in components:
        assert all(value > 0 for value in numbers(row, COMPONENT_NUMBERS)), row
    assert [(row["prompt"], row["seed"]) for row in parity] == [("a elephant and a rabbit", "0"), ("a dog and a frog", "1")]
    for row in parity:
        assert row["same decisions"] in ("yes", "no")
        assert 0 <= float(row["step-0 loss fp16"]) <= 1 and 0 <= float(row["step-0 loss fp32"]) <= 1


def test_a_rewrite_replaces_the_gpu_section_and_keeps_the_others(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    gpu_check = importlib.import_module("gpu_check")
    path = tmp_path / "benchmarks.md"
    before = "# Benchmarks\n\n<!-- a:start -->\n## A\nkept\n<!-- a:end -->\n"
    after = "<!-- b:start -->\n## B\nalso kept\n<!-- b:end -->\n"
    path.write_text(f"{before}\n{START}\n## GPU check\nold numbers\n{END}\n\n{after}")
    check = gpu_check.GpuCheck(gpu_check.DRY_SCALE, torch.device("cpu"), gpu_check.Budget(0.0), path)
    check.run()  # no time left: every measurement is skipped, and the section rewritten after each
    text = path.read_text()
    assert text.startswith(before) and text.endswith(after)
    assert text.count(START) == text.count(END) == 1 and "old numbers" not in text
    section = text[text.index(START):text.index(END)]
    assert "finished in" in section and "- skipped for time: sd14: plain SD, " in section and "not reached" not in section


def test_a_measurement_past_the_budget_is_cut_and_recorded(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    gpu_check = importlib.import_module("gpu_check")
    check = gpu_check.GpuCheck(gpu_check.DRY_SCALE, torch.device("cpu"), gpu_check.Budget(0.2), tmp_path / "b.md")
    check.measure("parity", lambda: time.sleep(5))
    check.measure("batch 1", lambda: {})
    assert check.results["parity"] == gpu_check.CUT and check.results["batch 1"] == gpu_check.SKIPPED
    assert "- cut at the time budget: parity" in (tmp_path / "b.md").read_text()


def test_without_a_gpu_it_asks_for_the_dry_run(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    gpu_check = importlib.import_module("gpu_check")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py"])
    with pytest.raises(SystemExit):
        gpu_check.main()
    error = capsys.readouterr().err
    assert "no CUDA device" in error and "Pass --dry-run" in error
