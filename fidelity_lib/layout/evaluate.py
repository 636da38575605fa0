"""Predictor evaluation (centre error, relation agreement), dataset layout files and layout figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from fidelity_lib.datasets import load_prompt_set
from fidelity_lib.detections import relation_holds
from fidelity_lib.stable import write_if_changed
from fidelity_lib.layout.data import LayoutExample
from fidelity_lib.layout.extraction import record_mentions
from fidelity_lib.layout.predictor import LayoutPredictor, ObjectPlacement

LAYOUTS_DIR = Path(__file__).resolve().parents[2] / "reports" / "layouts"  # the book's chapter 1 writes them


def sentence_bootstrap(per_sentence: list[list[bool]], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """A percentile CI of the pooled agreement, resampling sentences (as metrics.summary.bootstrap_ratio resamples prompts)."""
    kept = [values for values in per_sentence if values]
    if not kept:
        return float("nan"), float("nan")
    hits, counts = np.array([sum(values) for values in kept], float), np.array([len(values) for values in kept], float)
    picks = np.random.default_rng(seed).integers(0, len(kept), size=(n_boot, len(kept)))
    low, high = np.quantile(hits[picks].sum(axis=1) / counts[picks].sum(axis=1), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def evaluate_predictor(predictor: LayoutPredictor, coco_examples: list[LayoutExample], gpt_examples: list[LayoutExample]) -> pd.DataFrame:
    """Mean centre error on held-out captions and relation agreement on GPT labels (95% CI over sentences), each next to
    a trivial baseline."""
    errors, baseline_errors = [], []
    for example, centres in zip(coco_examples, predictor.predict_examples(coco_examples)):
        for predicted, truth in zip(centres, example.centres):
            if predicted is not None:
                errors.append(math.dist(predicted, truth))
                baseline_errors.append(math.dist((0.5, 0.5), truth))
    per_sentence = []
    for example, centres in zip(gpt_examples, predictor.predict_examples(gpt_examples)):
        per_sentence.append([relation_holds(centres[subject], centres[obj], relation)
                             for subject, obj, relation in example.relations
                             if centres[subject] is not None and centres[obj] is not None])
    agreements = [value for values in per_sentence for value in values]
    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    low, high = sentence_bootstrap(per_sentence)
    return pd.DataFrame(
        [
            {"metric": "mean centre error (held-out captions)", "value": mean(errors), "low": float("nan"),
             "high": float("nan"), "baseline": mean(baseline_errors), "baseline_is": "image centre (0.5, 0.5)",
             "n": len(errors)},
            {"metric": "relation agreement (held-out GPT labels)", "value": mean(agreements), "low": low, "high": high,
             "baseline": 0.5, "baseline_is": "chance", "n": len(agreements)},
        ]
    )


def dataset_layouts(predictor: LayoutPredictor, set_name: str, seed: int = 0) -> dict[str, list[dict]]:
    """Prompt -> [{name, phrase, x, y}] for a prompt set (duplicate prompts share one entry), from the set's own objects.

    With ``config.component == "sample"`` the n-th distinct prompt's components are drawn with seed ``seed + n``.
    """
    layouts, seeds = {}, {}
    for record in load_prompt_set(set_name):
        mentions = record_mentions(record)  # dataset prompts name COCO things and stuff
        prompt_seed = seeds.setdefault(record.prompt, seed + len(seeds))
        placements = predictor.predict_objects(record.prompt, mentions, seed=prompt_seed) if mentions else []
        layouts[record.prompt] = [vars(p) for p in placements]
    return layouts


def write_layouts(predictor: LayoutPredictor, set_name: str, weights: str, folder: str | Path = LAYOUTS_DIR, seed: int = 0) -> Path:
    """Write ``<folder>/<set_name>.json`` (atomic; kept when its centres are the same to 1e-4) with the profile and weights, so smoke layouts are never taken for paper ones."""
    layouts = dataset_layouts(predictor, set_name, seed)
    content = {
        "dataset": set_name,
        "profile": predictor.config.profile,
        "weights": weights,
        "component": predictor.config.component,
        "seed": seed,
        "coordinates": "centre (x, y) as fractions of width and height, y downward",
        "empty": sum(not objects for objects in layouts.values()),
        "layouts": layouts,
    }
    path = Path(folder) / f"{set_name}.json"
    write_if_changed(path, json.dumps(content, indent=1).encode("utf-8"))
    return path


def load_layouts(set_name: str, folder: str | Path = LAYOUTS_DIR) -> tuple[str, dict[str, list[ObjectPlacement]]]:
    """(profile, prompt -> placements) from a file written by ``write_layouts``."""
    content = json.loads((Path(folder) / f"{set_name}.json").read_text(encoding="utf-8"))
    return content["profile"], {prompt: [ObjectPlacement(**o) for o in objects] for prompt, objects in content["layouts"].items()}


def draw_layouts(layouts: dict[str, list[ObjectPlacement]], radius: float = 0.2):
    """One panel per sentence: each object's centre and its radius-0.2 disc (the ST region, attention.py L240-263), in
    image coordinates (y down); which predictor drew them is the saved figure's provenance line."""
    import matplotlib.pyplot as plt
    import textwrap

    figure, axes = plt.subplots(1, len(layouts), figsize=(3.2 * len(layouts), 3.9), squeeze=False)
    for axis, (sentence, placements) in zip(axes[0], layouts.items()):
        for index, placement in enumerate(placements):
            colour = f"C{index}"
            axis.add_patch(plt.Circle((placement.x, placement.y), radius, color=colour, alpha=0.25))
            axis.plot(placement.x, placement.y, "o", color=colour)
            axis.annotate(placement.phrase, (placement.x, placement.y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axis.set(xlim=(0, 1), ylim=(1, 0), aspect="equal", xticks=[0, 0.5, 1], yticks=[0, 0.5, 1])
        axis.set_title(textwrap.fill(sentence, 38), fontsize=7)
        axis.set(xlabel="x (fraction of width)", ylabel="y (fraction of height, down)")
    figure.tight_layout()
    return figure
