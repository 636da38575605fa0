"""CLIP image-text similarity as in Attend-and-Excite's ``metrics/compute_clip_similarity.py``.

Per image: cosine similarity with the 80-ImageNet-template embedding of the full prompt and of its two halves
(split on " and ", else " with "). Aggregates are flat means over images: ``full_text_aggregation`` and
``min_first_second_aggregation`` (the mean of min(first, second)).

Deliberate change: the original leaves prompts that do not split out of *every* aggregate, including the full-prompt
one; here ``full_text_aggregation`` covers every readable image. ``original_counting=True`` restores the original.
Speed: text embeddings are computed once per distinct text, template batches are cut to their longest real token
sequence (exact, the text encoder is causal) and images are encoded in batches.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import torch
from open_clip.transformer import text_global_pool
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from PIL import Image

from fidelity_lib.clip import ClipModel
from fidelity_lib.metrics.images import (
    MetricResult, cached_frame, collect_images, entry_row, iter_batches, problems_of, score_cache_path, write_json,
)
from fidelity_lib.models import default_device

IMAGENET_TEMPLATES = tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)  # the 80 CLIP ImageNet templates
CLIP_ARCH = "ViT-B-16"  # the metrics' CLIP (metrics/compute_clip_similarity.py); fidelity_lib.clip.openai_clip loads it


def template_texts(text: str) -> list[str]:
    """The 80 template sentences of a text, with the original's "a a" -> "a" and "the a" -> "a" string fixes."""
    return [template.format(text).replace("a a", "a").replace("the a", "a") for template in IMAGENET_TEMPLATES]


def split_prompt(prompt: str) -> tuple[str, str] | None:
    """The original's halves: split on " and ", else on " with "; None when neither occurs."""
    for word in (" and ", " with "):
        if word in prompt:
            parts = prompt.split(word)
            return parts[0], parts[1]
    return None


def encode_text(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` on tokens cut to the longest real sequence (same result: the mask is causal)."""
    trimmable = isinstance(model, open_clip.CLIP) and model.attn_mask is not None and model.text_pool_type == "argmax"
    if not trimmable:
        return model.encode_text(tokens)
    length = int((tokens != 0).sum(dim=1).max())
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, tokens, model.text_pool_type)
    return x @ model.text_projection if not isinstance(model.text_projection, torch.nn.Linear) else model.text_projection(x)


class ClipScorer:
    """CLIP embeddings with a per-text cache of template ensembles; images and texts go through in batches."""

    def __init__(self, clip: ClipModel, device: str | torch.device | None = None, batch_size: int = 32):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = clip.model.to(self.device).eval()
        self.preprocess, self.tokenizer, self.name = clip.preprocess, clip.tokenizer, clip.name
        self.batch_size = batch_size
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        chunks = [texts[i : i + 4 * self.batch_size] for i in range(0, len(texts), 4 * self.batch_size)]
        embeddings = [encode_text(self.model, self.tokenizer(chunk).to(self.device)).float() for chunk in chunks]
        return torch.nn.functional.normalize(torch.cat(embeddings), dim=-1)

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """Template-ensemble embeddings (normalised mean of the 80 normalised template embeddings), one row per text."""
        new = [text for text in dict.fromkeys(texts) if text not in self.cache]
        if new:
            encoded = self._encode([sentence for text in new for sentence in template_texts(text)])
            means = encoded.view(len(new), len(IMAGENET_TEMPLATES), -1).mean(dim=1)
            self.cache.update(zip(new, torch.nn.functional.normalize(means, dim=-1).cpu()))
        return torch.stack([self.cache[text] for text in texts])

    def plain_text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """One normalised encoding per text, no templates (how BLIP captions are embedded)."""
        return self._encode(list(texts)).cpu()

    @torch.no_grad()
    def image_embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        """Normalised image embeddings, one row per image."""
        rows = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.preprocess(image) for image in images[start : start + self.batch_size]])
            rows.append(self.model.encode_image(pixels.to(self.device)).float())
        return torch.nn.functional.normalize(torch.cat(rows), dim=-1).cpu()


def clip_frame(entries: list, scorer: ClipScorer, batch_size: int = 32) -> pd.DataFrame:
    """One row per image: full-prompt and half-prompt similarities (NaN halves for prompts that do not split)."""
    prompts = list(dict.fromkeys(entry.prompt for entry in entries))
    scorer.text_embeddings(prompts + [half for prompt in prompts for half in split_prompt(prompt) or ()])
    rows = []
    for good, images, bad in iter_batches(entries, batch_size):
        rows += [entry_row(entry, problem.reason) for entry, problem in bad]
        if not good:
            continue
        image_embeddings = scorer.image_embeddings(images)
        halves = [split_prompt(entry.prompt) for entry in good]
        full = (image_embeddings * scorer.text_embeddings([entry.prompt for entry in good])).sum(dim=1)
        for i, (entry, parts) in enumerate(zip(good, halves)):
            row = entry_row(entry) | {"full_text": float(full[i]), "first_half": np.nan, "second_half": np.nan}
            if parts is not None:
                first, second = scorer.text_embeddings(list(parts)) @ image_embeddings[i]
                row |= {"first_half": float(first), "second_half": float(second)}
            rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ("full_text", "first_half", "second_half"):
        frame[column] = frame.get(column, np.nan)
    frame["min_first_second"] = frame[["first_half", "second_half"]].min(axis=1, skipna=False)
    frame["clip_model"] = scorer.name
    return frame


def clip_aggregates(frame: pd.DataFrame, original_counting: bool = False) -> dict:
    """The original's flat means over images; with original_counting the full-prompt mean skips unsplit prompts too."""
    readable = frame[frame["error"].isna()]
    split = readable[readable["min_first_second"].notna()]
    full = split if original_counting else readable
    return {
        "full_text_aggregation": float(full["full_text"].mean()),
        "min_first_second_aggregation": float(split["min_first_second"].mean()),
        "clip_model": str(frame["clip_model"].iloc[0]),
        "counting": "original" if original_counting else "fixed",
        "n_images": len(readable),
        "n_images_split": len(split),
        "unreadable_images": problems_of(frame),
    }


def _raw_records(frame: pd.DataFrame, original_counting: bool) -> dict:
    raw = {}
    for prompt, group in frame[frame["error"].isna()].groupby("prompt", sort=False):
        if original_counting and group["min_first_second"].isna().all():
            continue
        halves = {key: [None if np.isnan(v) else v for v in group[key]] for key in ("first_half", "second_half")}
        raw[prompt] = {"full_text": list(group["full_text"]), **halves, "image_names": [Path(p).name for p in group["path"]]}
    return raw


def clip_score(
    images_dir: str | Path,
    dataset: str,
    methods: list[str] | None = None,
    *,
    scorer: ClipScorer,
    metrics_dir: str | Path | None = None,
    batch_size: int = 32,
    original_counting: bool = False,
) -> MetricResult:
    """CLIP image-text similarity of every image; writes ``<metrics_dir>/<method>/clip_{raw,aggregated}_metrics.json``."""
    cache = score_cache_path(metrics_dir, "clip", {"model": scorer.name})
    frame = cached_frame(collect_images(images_dir, dataset, methods), partial(clip_frame, scorer=scorer, batch_size=batch_size), cache)
    result = MetricResult(frame, {})
    for method, group in frame.groupby("method", sort=False):
        result.aggregates[method] = clip_aggregates(group, original_counting)
        if metrics_dir is not None:
            folder = Path(metrics_dir) / method
            result.files.append(write_json(_raw_records(group, original_counting), folder / "clip_raw_metrics.json"))
            result.files.append(write_json(result.aggregates[method], folder / "clip_aggregated_metrics.json"))
    return result
