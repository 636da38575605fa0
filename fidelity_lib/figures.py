"""The book's image figures: rows of images, methods side by side on the same seeds, spatial-temporal regions drawn over
images, and the explanation chapter's attention maps."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from PIL import Image

from fidelity_lib.datasets import PromptRecord
from fidelity_lib.generate import image_path

METHOD_TITLES = {"sd": "SD", "ae": "A&E", "st": "ST", "st+ae": "ST + A&E"}


def _clear(axis) -> None:
    axis.set_xticks([])
    axis.set_yticks([])


def image_grid(
    rows: Sequence[Sequence[Image.Image | Path]], row_titles: Sequence[str], title: str, cell: float = 1.0,
    column_titles: Sequence[str] = (), figsize: tuple[float, float] | None = None,
):
    """One row of images (or image paths, opened one at a time) per title, no ticks; row titles left, column titles on top."""
    columns = max(len(row) for row in rows)
    figsize = figsize or (cell * columns + 2.5, 1.15 * cell * len(rows))
    figure, axes = plt.subplots(len(rows), columns, figsize=figsize, squeeze=False)
    for axis_row, images, row_title in zip(axes, rows, row_titles):
        for axis in axis_row:
            _clear(axis)
        for axis, image in zip(axis_row, images):
            axis.imshow(Image.open(image) if isinstance(image, Path) else image)
        axis_row[0].set_ylabel(row_title, rotation=0, ha="right", va="center", fontsize=7)
    for axis, column_title in zip(axes[0], column_titles):
        axis.set_title(column_title, fontsize=7)
    figure.suptitle(title, fontsize=9)
    return figure


def method_grid(images_dir: Path, records: Sequence[PromptRecord], seeds: Sequence[int], methods: Sequence[str], title: str):
    """One row per (prompt, method), one column per seed: each method's image from the same starting noise."""
    pairs = [(record, method) for record in records for method in methods]
    rows = [[image_path(images_dir, method, record.prompt, seed) for seed in seeds] for record, method in pairs]
    row_titles = [f"{textwrap.fill(record.prompt, 28)}\n{METHOD_TITLES.get(method, method)}" for record, method in pairs]
    cell = 1.3 if len(seeds) > 2 else 2.2
    figsize = (cell * len(seeds) + 2.6, cell * len(rows) + 0.4)
    figure = image_grid(rows, row_titles, title, column_titles=[f"seed {seed}" for seed in seeds], figsize=figsize)
    figure.tight_layout()
    return figure


def draw_regions(axis, layout: Sequence[dict], size: tuple[int, int], radius: float) -> None:
    """Each object's disc (``radius`` of the image side, as spatial-temporal control used it) with its phrase."""
    for index, placement in enumerate(layout):
        centre = (placement["x"] * size[0], placement["y"] * size[1])
        axis.add_patch(plt.Circle(centre, radius * size[0], fill=False, color=f"C{index}", linewidth=1.5))
        top = (centre[0], centre[1] - radius * size[1])  # the label sits above the disc, off the object it names
        axis.annotate(placement["phrase"], top, color=f"C{index}", fontsize=7, ha="center", va="bottom",
                      bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "alpha": 0.7, "linewidth": 0})


def region_grid(images_dir: Path, shown: Sequence[tuple[dict, dict]], methods: Sequence[str], radius: float, title: str):
    """One row per (record, seed) of spatial-temporal manifest lines: each method's image, with the ST regions drawn.

    ``shown`` holds (st manifest line, its extras); the line gives prompt and seed, the extras the layout.
    """
    figure, axes = plt.subplots(len(shown), len(methods), figsize=(2.5 * len(methods), 2.7 * len(shown)), squeeze=False)
    for axis_row, (line, extras) in zip(axes, shown):
        for axis, method in zip(axis_row, methods):
            image = Image.open(image_path(images_dir, method, line["prompt"], line["seed"]))
            axis.imshow(image)
            if method != "sd":
                draw_regions(axis, extras["layout"], image.size, radius)
            _clear(axis)
            axis.set_title(f"{METHOD_TITLES.get(method, method)}, seed {line['seed']}", fontsize=8)
        axis_row[0].set_ylabel(textwrap.fill(line["prompt"], 30), fontsize=7)
    figure.suptitle(textwrap.fill(title, 110), fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.97))  # the suptitle keeps its own band above the first row
    return figure


def weight_heatmaps(shown: Sequence[tuple[dict, dict]], columns: int = 2):
    """Spatial-temporal weights after the last update as heatmaps, objects x denoising steps, one panel per image, all
    on one colour scale with one colorbar."""
    import numpy as np

    rows = -(-len(shown) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 1.7 * rows + 0.6), squeeze=False)
    values = [np.asarray(extras["weights"], dtype=float) for _, extras in shown]
    low, high = min(v.min() for v in values), max(v.max() for v in values)
    for axis, (line, extras), weights in zip(axes.flat, shown, values):
        image = axis.imshow(weights, aspect="auto", cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
        axis.set_yticks(range(len(weights)), [placement["phrase"] for placement in extras["layout"]], fontsize=7)
        axis.set_xlabel("denoising step", fontsize=7)
        axis.tick_params(axis="x", labelsize=7)
        axis.set_title(textwrap.fill(f"{line['prompt']}, seed {line['seed']}", 44), fontsize=7)
    for axis in axes.flat[len(shown):]:
        axis.set_visible(False)
    figure.tight_layout(rect=(0, 0, 0.88, 1))  # the colorbar gets its own strip on the right
    figure.colorbar(image, cax=figure.add_axes((0.9, 0.15, 0.015, 0.7)), label="weight of the object's local prompt")
    return figure


def attention_strip(
    runs: Mapping[str, tuple], subjects: Sequence[int], tokens: Sequence[str], strip_steps: Sequence[int],
    resolution: tuple[int, int], title: str,
):
    """One row per (run, subject token): the run's image, then the token's layer-mean map at each strip step.

    ``runs`` maps a label to (AttendExciteResult, its step_attention maps, ...); every map is drawn as the attention
    probability it is, on one colour scale (0 to the largest value shown) with one colorbar.
    """
    rows = [(label, index, token) for label in runs for index, token in zip(subjects, tokens)]
    maps_by_row = [[maps.mean_over_layers(resolution)[..., index] for maps in runs[label][1]] for label, index, _ in rows]
    top = max(float(token_map.max()) for row_maps in maps_by_row for token_map in row_maps)
    columns = len(strip_steps) + 1
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.9 * columns + 1.0, 1.9 * len(rows) + 0.5), squeeze=False)
    for row, ((label, index, token), row_maps) in enumerate(zip(rows, maps_by_row)):
        result, step_maps = runs[label][:2]
        axes[row, 0].imshow(result.image)
        axes[row, 0].set_title(f"{label}", fontsize=8)
        axes[row, 0].set_ylabel(f"'{token}' #{index}", fontsize=9)
        for column, (maps, token_map) in enumerate(zip(step_maps, row_maps), start=1):
            shown = axes[row, column].imshow(token_map, cmap="magma", vmin=0, vmax=top)
            axes[row, column].set_title(f"step {maps.step}: peak {token_map.max():.3f}", fontsize=7)
    for axis in axes.flat:
        _clear(axis)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0, 0.92, 0.96))
    figure.colorbar(shown, ax=axes[:, 1:].ravel().tolist(), label="attention probability (mean over layers)", shrink=0.8)
    return figure
