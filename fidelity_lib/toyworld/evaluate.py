"""Measure the toy world: sample prompts over seeds, check them with the exact detector, and give 95% intervals."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from fidelity_lib.attention import AttentionStore, attention_hook, cross_attention_layers
from fidelity_lib.detections import RELATION_AXES, Detection, relation_holds
from fidelity_lib.toyworld.detector import ToyDetector, colour_map, label_matches
from fidelity_lib.toyworld.scenes import Mention, ToyCaption, parse_caption

if TYPE_CHECKING:
    from fidelity_lib.layout.predictor import ObjectPlacement

ONE_OBJECT_PROMPTS = (
    "a red circle", "a green triangle", "a blue square", "a yellow circle", "a red triangle", "a blue triangle",
)
SAMPLING = {"num_inference_steps": 25, "guidance_scale": 7.5}


def metric_relation(relation: str) -> str:
    """The relation words of fidelity_lib.metrics ("left of") for a caption's ("to the left of")."""
    return relation.removeprefix("to the ")


def find_mention(detections: list[Detection], mention: Mention) -> Detection | None:
    """The largest detection of a mention: of its colour when the caption names one (exact), else of its shape."""
    if mention.colour is not None:
        return next((d for d in detections if d.label.split()[0] == mention.colour), None)
    return next((d for d in detections if d.label.split()[1] == mention.shape), None)


def score_image(detections: list[Detection], caption: ToyCaption) -> dict:
    """Per image: mentions present (colour, or shape when uncoloured), exact colour+shape, relation right (None if none)."""
    found = [find_mention(detections, mention) for mention in caption.mentions]
    row = {
        "present": sum(d is not None for d in found),
        "objects_present": sum(any(label_matches(d.label, m.name) for d in detections) for m in caption.mentions),
        "n_objects": len(caption.mentions),
    }
    row["all_present"] = row["present"] == row["n_objects"]
    row["all_objects"] = row["objects_present"] == row["n_objects"]
    row["first_present"] = found[0] is not None
    row["second_present"] = found[1] is not None if len(found) > 1 else None
    if caption.relation is not None:
        row["relation_correct"] = bool(found[0] and found[1] and relation_holds(found[0].center, found[1].center, metric_relation(caption.relation)))
    else:
        row["relation_correct"] = None
    return row


def baseline_images(pipe: StableDiffusionPipeline, prompt: str, seeds: Iterable[int], batch_size: int = 25) -> list[Image.Image]:
    """Plain pipeline samples, one CPU generator per seed (so each image depends only on its seed)."""
    seeds = list(seeds)
    images = []
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in chunk]
        images += pipe([prompt] * len(chunk), generator=generators, **SAMPLING).images
    return images


def evaluate(
    prompts: Iterable[str],
    seeds: Iterable[int],
    generate: Callable[[str, list[int]], list[Image.Image]],
    method: str,
    detector: ToyDetector | None = None,
) -> pd.DataFrame:
    """One row per (prompt, seed): the scores of ``generate(prompt, seeds)``'s images."""
    detector = detector or ToyDetector()
    seeds = list(seeds)
    rows = []
    for prompt in tqdm(list(prompts), desc=method, leave=False):
        parsed = parse_caption(prompt)
        for seed, image in zip(seeds, generate(prompt, seeds)):
            rows.append({"method": method, "prompt": prompt, "seed": seed} | score_image(detector.detect(image), parsed))
    return pd.DataFrame(rows)


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if total == 0:
        return float("nan"), float("nan")
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return float(centre - half), float(centre + half)


def rate_table(frame: pd.DataFrame, column: str, by: list[str]) -> pd.DataFrame:
    """Rate of a boolean column per group, with counts and the 95% Wilson interval."""
    rows = []
    for key, group in frame.dropna(subset=[column]).groupby(by, sort=False):
        successes, total = int(group[column].astype(bool).sum()), len(group)
        low, high = wilson_interval(successes, total)
        keys = key if isinstance(key, tuple) else (key,)
        rows.append(dict(zip(by, keys)) | {"metric": column, "successes": successes, "n": total, "rate": successes / total, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def paired_difference(treated: pd.DataFrame, baseline: pd.DataFrame, column: str, resamples: int = 5000, seed: int = 0) -> dict:
    """Mean paired difference (treated - baseline) over the same (prompt, seed) pairs, with a 95% bootstrap interval, and
    its two parts: repairs (baseline failed, treated succeeded) and breakages (the reverse)."""
    joined = treated.merge(baseline, on=["prompt", "seed"], suffixes=("_treated", "_baseline"))
    differences = joined[f"{column}_treated"].astype(float).to_numpy() - joined[f"{column}_baseline"].astype(float).to_numpy()
    rng = np.random.default_rng(seed)
    means = rng.choice(differences, size=(resamples, len(differences))).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"metric": column, "n_pairs": len(differences), "difference": float(differences.mean()), "ci_low": float(low),
            "ci_high": float(high), "repairs": int((differences > 0).sum()), "breakages": int((differences < 0).sum())}


def relation_layout(prompt: str, gap: float = 0.2) -> list[ObjectPlacement]:
    """The two objects 2 x ``gap`` apart along the prompt's relation (no relation stated: the first on the left)."""
    from fidelity_lib.layout.predictor import ObjectPlacement

    parsed = parse_caption(prompt)
    if len(parsed.mentions) != 2:
        raise ValueError(f"{prompt!r} does not name two objects.")
    axis, sign = RELATION_AXES[metric_relation(parsed.relation or "to the left of")]
    offset = [0.0, 0.0]
    offset[axis] = -sign * gap  # the subject on the smaller side of the axis for "left of" and "above"
    first, second = parsed.mentions
    return [
        ObjectPlacement(first.shape, f"a {first.name}", 0.5 + offset[0], 0.5 + offset[1]),
        ObjectPlacement(second.shape, f"a {second.name}", 0.5 - offset[0], 0.5 - offset[1]),
    ]


def object_pixels(image: Image.Image, detection: Detection) -> np.ndarray:
    """Boolean 32x32 mask of a detection's object: the non-background pixels inside its box."""
    x0, y0, x1, y1 = (int(v) for v in detection.box)
    mask = np.zeros(image.size[::-1], dtype=bool)
    mask[y0:y1, x0:x1] = colour_map(np.asarray(image.convert("RGB")))[y0:y1, x0:x1] >= 0
    return mask


def attention_diagnostics(pipe: StableDiffusionPipeline, items: Sequence[tuple[str, int]], batch_size: int = 16) -> pd.DataFrame:
    """Per (prompt, seed, noun, grid): the noun's max attention and the share of it inside its detected object's mask.

    Baseline samples; the maps are the conditional branch's at the last step, averaged over heads and over the
    layers of each grid (16x16, 8x8). Nouns whose object the detector does not find get no share (NaN).
    """
    latent_size = (pipe.unet.config.sample_size,) * 2
    layers = cross_attention_layers(pipe.unet, latent_size)
    detector, rows = ToyDetector(), []
    for start in range(0, len(items), batch_size):
        chunk = list(items[start : start + batch_size])
        store = AttentionStore(branches="both", mean_heads=True)
        with attention_hook(pipe.unet, layers, store):
            images = pipe([p for p, _ in chunk], generator=[torch.Generator("cpu").manual_seed(s) for _, s in chunk], **SAMPLING).images
        for row, ((prompt, seed), image) in enumerate(zip(chunk, images)):
            detections = detector.detect(image)
            for mention in parse_caption(prompt).mentions:
                found = find_mention(detections, mention)
                mask = object_pixels(image, found) if found is not None else None
                for resolution in sorted({layer.resolution for layer in layers}, reverse=True):
                    chosen = [store.maps[layer.name][len(chunk) + row, 0] for layer in layers if layer.resolution == resolution]
                    noun = torch.stack(chosen).mean(dim=0)[:, :, mention.noun_index].numpy()  # [h, w]
                    share = float("nan")
                    if mask is not None:
                        factor = mask.shape[0] // resolution[0]
                        pooled = mask.reshape(resolution[0], factor, resolution[1], factor).mean(axis=(1, 3))
                        share = float((pooled * noun).sum() / noun.sum())
                    rows.append({"prompt": prompt, "seed": seed, "noun": mention.shape, "grid": f"{resolution[0]}x{resolution[1]}",
                                 "max_attention": float(noun.max()), "share_in_mask": share, "found": found is not None})
    return pd.DataFrame(rows)
