"""The book's image figures: methods side by side on the same seeds, and spatial-temporal regions drawn over images."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from PIL import Image

from fidelity_lib.datasets import PromptRecord
from fidelity_lib.generate import image_path

METHOD_TITLES = {"sd": "SD", "ae": "A&E", "st": "ST", "st+ae": "ST + A&E"}


def _clear(axis) -> None:
    axis.set_xticks([])
    axis.set_yticks([])


def method_grid(images_dir: Path, records: Sequence[PromptRecord], seeds: Sequence[int], methods: Sequence[str], title: str):
    """One row per (prompt, method), one column per seed: each method's image from the same starting noise."""
    rows = [(record, method) for record in records for method in methods]
    cell = 1.3 if len(seeds) > 2 else 2.2
    figure, axes = plt.subplots(len(rows), len(seeds), figsize=(cell * len(seeds) + 2.6, cell * len(rows) + 0.4), squeeze=False)
    for axis_row, (record, method) in zip(axes, rows):
        for axis, seed in zip(axis_row, seeds):
            axis.imshow(Image.open(image_path(images_dir, method, record.prompt, seed)))
            _clear(axis)
        label = f"{textwrap.fill(record.prompt, 28)}\n{METHOD_TITLES.get(method, method)}"
        axis_row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    for axis, seed in zip(axes[0], seeds):
        axis.set_title(f"seed {seed}", fontsize=7)
    figure.suptitle(title, fontsize=9)
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
