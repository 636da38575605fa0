"""Outputs that do not churn across machines: a committed artefact is rewritten only when its content changes beyond
the precision it is shown at.

Float sums differ in their last bits from one CPU to another, so a byte comparison would rewrite every table and
figure on every machine. ``write_if_changed`` keeps the file on disk when the new content is the same under these
rules, and writes it (atomically) otherwise:

- text (Markdown, summaries, notebook text): equal once every number with decimals is compared to one unit of its
  last shown digit (``0.1234`` and ``0.1235`` are the same, ``0.12`` and ``0.14`` are not); integers (counts, seeds,
  n) must be equal;
- CSV tables and JSON: the same columns and keys, numbers within ``NUMBER_TOLERANCE`` (one unit of the four
  decimals the tables show), and strings (formatted cells such as ``0.562 [0.312, 0.875]``) under the text rule;
- PNG images: the same size, and no pixel channel more than ``MAX_PIXEL_DIFFERENCE`` apart;
- safetensors weights: the same tensors, within ``NUMBER_TOLERANCE``;
- executed notebooks (``stable_notebook`` first strips what only says how and where they ran): the same cells and
  outputs under the rules above; outputs of cells tagged ``run-log`` (timings, files written) are not compared.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path

from fidelity_lib.files import atomic_write_bytes

NUMBER_TOLERANCE = 1e-4  # CSV, JSON and weights: one unit of the 4 decimals the Markdown tables show
MAX_PIXEL_DIFFERENCE = 8  # of 255: anti-aliasing moved by a float's last bits, not a changed plot
RUN_LOG_TAG = "run-log"  # a notebook cell whose outputs describe the run (timings, files written), not its results
VOLATILE_METADATA = ("papermill", "execution", "widgets")  # timestamps, durations, parameters' paths, widget state
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
REPO_ROOT = Path(__file__).resolve().parent.parent


def same_text(old: str, new: str) -> bool:
    """Equal but for numbers with decimals, each within one unit of its last shown digit; integers equal."""
    old_parts, new_parts = NUMBER.split(old), NUMBER.split(new)
    if old_parts != new_parts:
        return False
    return all(_same_shown_number(a, b) for a, b in zip(NUMBER.findall(old), NUMBER.findall(new)))


def _same_shown_number(old: str, new: str) -> bool:
    if old == new:
        return True
    shown = re.fullmatch(r"[-+]?\d*(\.\d*)?(?:[eE]([-+]?\d+))?", new)
    if shown.group(1) is None and shown.group(2) is None:
        return False  # an integer: a count, a seed, an n
    decimals = len((shown.group(1) or ".")[1:]) - int(shown.group(2) or 0)
    return abs(float(old) - float(new)) <= 10.0 ** -decimals * (1 + 1e-9)


def _same_value(old, new) -> bool:
    """JSON values: same structure, numbers within NUMBER_TOLERANCE (NaN equals NaN), strings under ``same_text``."""
    if isinstance(old, dict) and isinstance(new, dict):
        return old.keys() == new.keys() and all(_same_value(old[key], new[key]) for key in old)
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(map(_same_value, old, new))
    numbers = (int, float)
    if isinstance(old, numbers) and isinstance(new, numbers) and not isinstance(old, bool) and not isinstance(new, bool):
        if math.isnan(old) or math.isnan(new):
            return math.isnan(old) and math.isnan(new)
        return abs(old - new) <= NUMBER_TOLERANCE
    if isinstance(old, str) and isinstance(new, str):
        return same_text(old, new)  # a formatted cell such as "0.562 [0.312, 0.875]"
    return old == new


def same_json(old: bytes, new: bytes) -> bool:
    """JSON documents equal under ``_same_value``."""
    try:
        return _same_value(json.loads(old), json.loads(new))
    except ValueError:
        return old == new


def same_table(old: bytes, new: bytes) -> bool:
    """CSV tables with the same header and strings, numbers within NUMBER_TOLERANCE."""
    import pandas as pd

    try:
        old_table, new_table = (pd.read_csv(io.BytesIO(data), keep_default_na=False, na_values=[""]) for data in (old, new))
    except (ValueError, pd.errors.ParserError):
        return old == new
    if list(old_table.columns) != list(new_table.columns) or old_table.shape != new_table.shape:
        return False
    return _same_value(old_table.to_dict("list"), new_table.to_dict("list"))


def same_image(old: bytes, new: bytes) -> bool:
    """PNGs of the same size whose pixels differ by at most MAX_PIXEL_DIFFERENCE in every channel."""
    import numpy as np
    from PIL import Image

    try:
        old_pixels, new_pixels = (np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"), dtype=np.int16) for data in (old, new))
    except OSError:
        return old == new
    return old_pixels.shape == new_pixels.shape and int(np.abs(old_pixels - new_pixels).max(initial=0)) <= MAX_PIXEL_DIFFERENCE


def same_weights(old: bytes, new: bytes) -> bool:
    """safetensors files with the same tensors (names, shapes, dtypes), values within NUMBER_TOLERANCE."""
    import torch
    from safetensors.torch import load

    old_tensors, new_tensors = load(old), load(new)
    if old_tensors.keys() != new_tensors.keys():
        return False
    return all(
        old_tensors[name].shape == new_tensors[name].shape and old_tensors[name].dtype == new_tensors[name].dtype
        and bool(torch.allclose(old_tensors[name].double(), new_tensors[name].double(), rtol=0, atol=NUMBER_TOLERANCE))
        for name in old_tensors
    )


def stable_notebook(data: bytes, repo_root: Path = REPO_ROOT) -> bytes:
    """An executed notebook without what says only how and where it ran: papermill and execution metadata, stderr
    streams (progress bars, warnings), the checkout's absolute path in outputs and in the injected parameters (written
    as a path relative to it) and the random id papermill gives its parameters cell."""
    import nbformat

    notebook = nbformat.reads(data.decode("utf-8"), as_version=4)
    for key in VOLATILE_METADATA:
        notebook.metadata.pop(key, None)
    root = str(repo_root.resolve()) + "/"
    for cell in notebook.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.id = "injected-parameters"  # papermill gives it a random id on every run
            cell.source = cell.source.replace(root, "")  # reports_dir and the like, relative to the checkout
        for key in VOLATILE_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type != "code":
            continue
        cell.outputs = [output for output in cell.outputs if not (output.output_type == "stream" and output.name == "stderr")]
        for output in cell.outputs:
            if output.output_type == "stream":
                output.text = output.text.replace(root, "")
            for kind, value in output.get("data", {}).items():
                if isinstance(value, str) and not kind.startswith("image/"):
                    output.data[kind] = value.replace(root, "")
    return (nbformat.writes(notebook) + "\n").encode("utf-8")


def same_notebook(old: bytes, new: bytes) -> bool:
    """Notebooks with the same cells, metadata and outputs under these rules; run-log cells' outputs not compared."""
    import nbformat

    try:
        old_notebook, new_notebook = (nbformat.reads(data.decode("utf-8"), as_version=4) for data in (old, new))
    except (ValueError, UnicodeDecodeError):
        return old == new
    if old_notebook.metadata != new_notebook.metadata or len(old_notebook.cells) != len(new_notebook.cells):
        return False
    return all(_same_cell(a, b) for a, b in zip(old_notebook.cells, new_notebook.cells))


def _same_cell(old, new) -> bool:
    if (old.cell_type, old.source, old.metadata) != (new.cell_type, new.source, new.metadata):
        return False
    if old.cell_type != "code" or RUN_LOG_TAG in new.metadata.get("tags", []):
        return True
    return len(old.outputs) == len(new.outputs) and all(map(_same_output, old.outputs, new.outputs))


def _same_output(old, new) -> bool:
    if old.output_type != new.output_type or old.get("name") != new.get("name"):
        return False
    if old.output_type == "stream":
        return same_text(old.text, new.text)
    if old.output_type == "error":
        return (old.ename, old.evalue) == (new.ename, new.evalue)
    old_data, new_data = old.get("data", {}), new.get("data", {})
    if old_data.keys() != new_data.keys():
        return False
    for kind in old_data:
        if kind.startswith("image/png"):
            if not same_image(base64.b64decode(old_data[kind]), base64.b64decode(new_data[kind])):
                return False
        elif not same_text(str(old_data[kind]), str(new_data[kind])):
            return False
    return True


COMPARERS = {".csv": same_table, ".json": same_json, ".png": same_image, ".safetensors": same_weights, ".ipynb": same_notebook}


def same_content(path: Path, data: bytes) -> bool:
    """Whether ``path`` already holds ``data``'s content under the rule for its kind (text for any other suffix)."""
    path = Path(path)
    if not path.is_file():
        return False
    old = path.read_bytes()
    if old == data:
        return True
    comparer = COMPARERS.get(path.suffix)
    if comparer is not None:
        return comparer(old, data)
    try:
        return same_text(old.decode("utf-8"), data.decode("utf-8"))
    except UnicodeDecodeError:
        return False


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` (atomically) unless it holds the same content already; True when it wrote."""
    if same_content(path, data):
        return False
    atomic_write_bytes(Path(path), data)
    return True
