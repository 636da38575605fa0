"""The book's image figures: rows of images, methods side by side on the same seeds, spatial-temporal regions drawn over
images, and the explanation chapter's attention maps."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from PIL import Image

from fidelity_lib.datasets import PromptRecord
from fidelity_lib.explain import normalised_map
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
        axis.annotate(placement["phrase"], centre, color=f"C{index}", fontsize=7, ha="center")


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
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def weight_curves(shown: Sequence[tuple[dict, dict]]):
    """Spatial-temporal weights over the steps after the last update, one curve per object, one panel per image."""
    figure, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 2.8), squeeze=False)
    for axis, (line, extras) in zip(axes[0], shown):
        for index, (placement, weights) in enumerate(zip(extras["layout"], extras["weights"])):
            axis.plot(weights, color=f"C{index}", label=placement["phrase"])
        axis.set(xlabel="step", ylabel="weight")
        axis.set_title(textwrap.fill(line["prompt"], 40), fontsize=7)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def attention_strip(
    runs: Mapping[str, tuple], subjects: Sequence[int], tokens: Sequence[str], strip_steps: Sequence[int],
    resolution: tuple[int, int], title: str,
):
    """One row per (run, subject token): the run's image, then the token's layer-mean map at each strip step.

    ``runs`` maps a label to (AttendExciteResult, its step_attention maps, ...); maps are shown rescaled to their maximum.
    """
    rows = [(label, index, token) for label in runs for index, token in zip(subjects, tokens)]
    columns = len(strip_steps) + 1
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.9 * columns, 1.9 * len(rows)), squeeze=False)
    for row, (label, index, token) in enumerate(rows):
        result, step_maps = runs[label][:2]
        axes[row, 0].imshow(result.image)
        axes[row, 0].set_title(f"{label}", fontsize=8)
        axes[row, 0].set_ylabel(f"'{token}' #{index}", fontsize=9)
        for column, maps in enumerate(step_maps, start=1):
            token_map = maps.mean_over_layers(resolution)[..., index]
            axes[row, column].imshow(normalised_map(token_map), cmap="magma", vmin=0, vmax=1)
            axes[row, column].set_title(f"step {maps.step}: {token_map.max():.3f}", fontsize=7)
    for axis in axes.flat:
        _clear(axis)
    figure.suptitle(title, fontsize=10)
    return figure
