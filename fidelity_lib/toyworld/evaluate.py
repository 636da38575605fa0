"""Measure the toy world: sample prompts over seeds, check them with the exact detector, and give 95% intervals."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from fidelity_lib.metrics.detection import Detection, relation_holds
from fidelity_lib.toyworld.detector import ToyDetector
from fidelity_lib.toyworld.scenes import COLOURS, RELATIONS, SHAPES

if TYPE_CHECKING:
    from fidelity_lib.attend_excite import AttendExciteConfig
    from fidelity_lib.layout.predictor import ObjectPlacement
    from fidelity_lib.spacetime import SpaceTimeConfig

ONE_OBJECT_PROMPTS = (
    "a red circle", "a green triangle", "a blue square", "a yellow circle", "a red triangle", "a blue triangle",
)
TWO_OBJECT_PROMPTS = (
    "a red circle and a blue square", "a green triangle and a yellow circle", "a blue circle and a red triangle",
    "a yellow square and a green circle", "a red triangle and a green square", "a blue square and a yellow triangle",
)
RELATION_PROMPTS = (
    "a red circle to the left of a blue square", "a green triangle above a yellow circle",
    "a blue circle to the right of a red triangle", "a yellow square below a green circle",
    "a red square above a green triangle", "a blue triangle to the left of a yellow square",
)
PROMPT_SETS = {"one-object": ONE_OBJECT_PROMPTS, "two-object": TWO_OBJECT_PROMPTS, "relation": RELATION_PROMPTS}
OBJECT = rf"a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
PROMPT_FORM = re.compile(rf"^{OBJECT}(?: (and|with|{'|'.join(RELATIONS)}) {OBJECT})?$")
SAMPLING = {"num_inference_steps": 25, "guidance_scale": 7.5}


@dataclass(frozen=True)
class ToyPrompt:
    """A parsed toy prompt: its objects ("red circle", ...) and the relation of the first to the second, if any."""

    text: str
    objects: tuple[str, ...]
    relation: str | None


def parse_prompt(prompt: str) -> ToyPrompt:
    """Objects and relation of a one- or two-object toy prompt."""
    match = PROMPT_FORM.match(prompt)
    if match is None:
        raise ValueError(f"{prompt!r} is not a toy prompt like 'a red circle and a blue square'.")
    colour_a, shape_a, joiner, colour_b, shape_b = match.groups()
    objects = (f"{colour_a} {shape_a}",) + ((f"{colour_b} {shape_b}",) if joiner else ())
    relation = joiner if joiner in RELATIONS else None
    return ToyPrompt(prompt, objects, relation)


def metric_relation(relation: str) -> str:
    """The relation words of fidelity_lib.metrics ("left of") for a caption's ("to the left of")."""
    return relation.removeprefix("to the ")


def largest_of_colour(detections: list[Detection], colour: str) -> Detection | None:
    """The largest detection of a colour (the detector sorts by area)."""
    return next((d for d in detections if d.label.split()[0] == colour), None)


def score_image(detections: list[Detection], prompt: ToyPrompt) -> dict:
    """Per image: each object's colour present, colour+shape present, all present, relation right (None if no relation)."""
    colours = [name.split()[0] for name in prompt.objects]
    found = [largest_of_colour(detections, colour) for colour in colours]
    row = {
        "colours_present": sum(d is not None for d in found),
        "objects_present": sum(any(d.label == name for d in detections) for name in prompt.objects),
        "n_objects": len(prompt.objects),
    }
    row["all_colours"] = row["colours_present"] == row["n_objects"]
    row["all_objects"] = row["objects_present"] == row["n_objects"]
    row["first_present"] = found[0] is not None
    row["second_present"] = found[-1] is not None if len(found) > 1 else None
    if prompt.relation is not None:
        row["relation_correct"] = row["all_colours"] and relation_holds(found[0], found[1], metric_relation(prompt.relation))
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
        parsed = parse_prompt(prompt)
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
    """Mean paired difference (treated - baseline) over the same (prompt, seed) pairs, with a 95% bootstrap interval."""
    joined = treated.merge(baseline, on=["prompt", "seed"], suffixes=("_treated", "_baseline"))
    differences = joined[f"{column}_treated"].astype(float).to_numpy() - joined[f"{column}_baseline"].astype(float).to_numpy()
    rng = np.random.default_rng(seed)
    means = rng.choice(differences, size=(resamples, len(differences))).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"metric": column, "n_pairs": len(differences), "difference": float(differences.mean()), "ci_low": float(low), "ci_high": float(high)}


def toy_ae_config() -> AttendExciteConfig:
    """A&E on the toy world: the 8x8 maps, the paper's step sizes, the first 12 of 25 steps altered (half, as 25 of 50).

    Used with colours and nouns excited, the best of the settings tried (data/toyworld/README.md lists them all).
    """
    from fidelity_lib.attend_excite import AttendExciteConfig

    return AttendExciteConfig(max_iter_to_alter=12, attention_res=8)


def colour_and_noun_indices(pipe: StableDiffusionPipeline, prompt: str) -> tuple[int, ...]:
    """Token positions of every colour word and shape noun of a toy prompt (each is one CLIP token)."""
    tokens = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(prompt).input_ids)
    words = set(COLOURS) | set(SHAPES)
    return tuple(i for i, token in enumerate(tokens) if token.removesuffix("</w>") in words)


def ae_images(
    pipe: StableDiffusionPipeline, prompt: str, seeds: Iterable[int], config: AttendExciteConfig | None = None, excite_colours: bool = False
) -> list[Image.Image]:
    """Attend-and-Excite samples (same sampler settings as ``baseline_images``); nouns, or colours and nouns, excited."""
    from fidelity_lib.attend_excite import attend_and_excite

    config = config if config is not None else toy_ae_config()
    indices = colour_and_noun_indices(pipe, prompt) if excite_colours else None
    return [
        attend_and_excite(pipe, prompt, indices, seed=seed, config=config, **SAMPLING).image
        for seed in tqdm(list(seeds), desc="A&E", leave=False)
    ]


RELATION_OFFSETS = {"to the left of": (-1, 0), "to the right of": (1, 0), "above": (0, -1), "below": (0, 1)}


def relation_layout(prompt: str, gap: float = 0.2) -> list[ObjectPlacement]:
    """The two objects 2 x ``gap`` apart along the prompt's relation (no relation stated: the first on the left)."""
    from fidelity_lib.layout.predictor import ObjectPlacement

    parsed = parse_prompt(prompt)
    if len(parsed.objects) != 2:
        raise ValueError(f"{prompt!r} does not name two objects.")
    dx, dy = RELATION_OFFSETS[parsed.relation or "to the left of"]
    first, second = parsed.objects
    return [
        ObjectPlacement(first.split()[1], f"a {first}", 0.5 + dx * gap, 0.5 + dy * gap),
        ObjectPlacement(second.split()[1], f"a {second}", 0.5 - dx * gap, 0.5 - dy * gap),
    ]


def toy_st_config() -> SpaceTimeConfig:
    """Spatial-temporal settings for the toy world: 25 steps, local texts without "a photo of" (not toy words)."""
    from fidelity_lib.spacetime import SpaceTimeConfig

    return SpaceTimeConfig(num_inference_steps=SAMPLING["num_inference_steps"], local_prompt="{}", local_clip_prompt="{}", clip_normalize=True)


def st_images(
    pipe: StableDiffusionPipeline, prompt: str, seeds: Iterable[int], clip_model, config: SpaceTimeConfig | None = None, method: str = "st"
) -> list[Image.Image]:
    """Spatial-temporal samples on the relation's layout (``method="st+ae"`` adds A&E guidance)."""
    from fidelity_lib.spacetime import spacetime_generate

    config = config if config is not None else toy_st_config()
    layout = relation_layout(prompt)
    return [
        spacetime_generate(pipe, prompt, layout, seed=seed, config=config, clip_model=clip_model, method=method).image
        for seed in tqdm(list(seeds), desc=method, leave=False)
    ]


def token_attention(pipe: StableDiffusionPipeline, prompt: str, seed: int, resolution: int) -> pd.DataFrame:
    """Per prompt token: mean and max over pixels of the conditional cross-attention at ``resolution`` (last step)."""
    from fidelity_lib.attention import AttentionStore, attention_hook, cross_attention_layers, layers_at_resolution

    latent_size = (pipe.unet.config.sample_size,) * 2
    layers = layers_at_resolution(cross_attention_layers(pipe.unet, latent_size), (resolution, resolution))
    store = AttentionStore(branches="both", mean_heads=True)
    with attention_hook(pipe.unet, layers, store):
        pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed), **SAMPLING)
    conditional = torch.stack([maps[-1, 0] for maps in store.maps.values()]).mean(dim=0)  # [height, width, tokens]
    tokens = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(prompt, padding="max_length").input_ids)
    flat = conditional.reshape(-1, conditional.shape[-1])
    return pd.DataFrame({"token": tokens, "mean": flat.mean(dim=0).numpy(), "max": flat.max(dim=0).values.numpy()})
