"""BLIP caption text-text similarity as in Attend-and-Excite's ``metrics/blip_captioning_and_clip_similarity.py``.

Each image gets one BLIP caption (beam 3, 10-30 tokens, "a picture of " prompt stripped, as LAVIS ``base_coco``);
similarity = CLIP(caption, one plain encoding) . CLIP(prompt, 80-template ensemble). Aggregates: the mean and the
population std over all images. The default captioner is transformers' ``BlipForConditionalGeneration``
(``Salesforce/blip-image-captioning-base``, close to but not bit-identical with LAVIS ``base_coco``); the original,
LAVIS itself, runs in its own environment behind the same Captioner interface (``fidelity_lib.metrics.lavis``).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from PIL import Image
from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

from fidelity_lib.datasets import PAPER_SET_NAMES, load_prompt_set
from fidelity_lib.metrics.clip_score import ClipScorer
from fidelity_lib.metrics.images import (
    MetricResult, cached_frame, collect_images, entry_row, iter_batches, problems_of, score_cache_path, write_json,
)
from fidelity_lib.models import WeightsNotFoundError, cache_dir, default_device

BLIP_REPO_ID = "Salesforce/blip-image-captioning-base"
CAPTION_PROMPT = "a picture of "
GENERATION = {"num_beams": 3, "max_length": 30, "min_length": 10, "repetition_penalty": 1.0, "do_sample": False}
TINY_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


class Captioner(Protocol):
    """Anything that writes one caption per image; ``name`` goes into every output."""

    name: str

    def caption(self, images: list[Image.Image]) -> list[str]: ...


def strip_prompt(caption: str, prompt: str = CAPTION_PROMPT) -> str:
    """Remove the generation prompt from the start of a caption, as LAVIS does."""
    caption = caption.strip()
    return caption[len(prompt.strip()) :].strip() if caption.startswith(prompt.strip()) else caption


class BlipCaptioner:
    """transformers BLIP captioning with the LAVIS base_coco generation settings."""

    def __init__(self, model: BlipForConditionalGeneration, processor: BlipProcessor, name: str, device=None, generation: dict | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.model, self.processor, self.name = model.to(self.device).eval(), processor, name
        self.generation = GENERATION if generation is None else generation

    @torch.no_grad()
    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, the prompt stripped."""
        inputs = self.processor(images=images, text=[CAPTION_PROMPT.strip()] * len(images), return_tensors="pt")
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        output = self.model.generate(**inputs, **self.generation)
        return [strip_prompt(text) for text in self.processor.batch_decode(output, skip_special_tokens=True)]


def _tiny_vocab() -> Path:
    """A BERT vocabulary of the special tokens plus every word of the prompt sets, written once to the cache."""
    path = cache_dir() / "tiny_blip_vocab" / "vocab.txt"
    if not path.exists():
        words = {word.strip(".,").lower() for name in PAPER_SET_NAMES for record in load_prompt_set(name) for word in record.prompt.split()}
        words |= set(CAPTION_PROMPT.split())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([*TINY_SPECIAL_TOKENS, *sorted(w for w in words if w)]) + "\n")
    return path


def tiny_blip(seed: int = 0, device=None) -> BlipCaptioner:
    """A random-weight BLIP captioner with a small offline BERT vocabulary (plumbing only)."""
    tokenizer = BertTokenizer(str(_tiny_vocab()), bos_token="[DEC]")
    ids = tokenizer.convert_tokens_to_ids
    text = {
        "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 64,
        "bos_token_id": ids("[DEC]"), "sep_token_id": ids("[SEP]"), "eos_token_id": ids("[SEP]"), "pad_token_id": ids("[PAD]"),
    }
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 32, "patch_size": 8}
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32))
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    return BlipCaptioner(model, processor, f"tiny-random-blip(seed={seed})", device)


def paper_blip(weights: str | os.PathLike | None = None, device=None) -> BlipCaptioner:
    """The BLIP base captioner from a local folder or the HF cache (never downloads)."""
    source = str(Path(weights).expanduser()) if weights is not None else BLIP_REPO_ID
    try:
        model = BlipForConditionalGeneration.from_pretrained(source, local_files_only=True)
        processor = BlipProcessor.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as error:
        raise WeightsNotFoundError(
            f"BLIP captioner '{BLIP_REPO_ID}' was not found in {source} ({type(error).__name__}). This book never downloads "
            f"weights. On a machine with internet access run\n    huggingface-cli download {BLIP_REPO_ID}\n(fills the "
            f"Hugging Face cache) or add --local-dir ~/weights/blip-image-captioning-base and pass that folder."
        ) from error
    return BlipCaptioner(model, processor, f"transformers {source}", device)


def blip_frame(entries: list, captioner: Captioner, scorer: ClipScorer, batch_size: int = 16) -> pd.DataFrame:
    """One row per image: caption and its CLIP text-text similarity with the prompt's template ensemble."""
    rows = []
    for good, images, bad in iter_batches(entries, batch_size):
        rows += [entry_row(entry, problem.reason) for entry, problem in bad]
        if not good:
            continue
        captions = captioner.caption(images)
        similarity = (scorer.plain_text_embeddings(captions) * scorer.text_embeddings([e.prompt for e in good])).sum(dim=1)
        rows += [entry_row(e) | {"caption": c, "text_similarity": float(s)} for e, c, s in zip(good, captions, similarity)]
    frame = pd.DataFrame(rows)
    frame["caption"] = frame.get("caption", None)
    frame["text_similarity"] = frame.get("text_similarity", np.nan)
    frame["captioner"], frame["clip_model"] = captioner.name, scorer.name
    return frame


def blip_aggregates(frame: pd.DataFrame) -> dict:
    """The original's mean and population std (np.std) over all readable images, with the models named."""
    values = frame.loc[frame["error"].isna(), "text_similarity"].to_numpy(dtype=float)
    return {
        "average_similarity": float(np.mean(values)),
        "std_similarity": float(np.std(values)),
        "captioner": str(frame["captioner"].iloc[0]),
        "clip_model": str(frame["clip_model"].iloc[0]),
        "n_images": len(values),
        "unreadable_images": problems_of(frame),
    }


def _raw_records(frame: pd.DataFrame) -> dict:
    readable = frame[frame["error"].isna()]
    return {
        prompt: {
            "text_similarities": list(group["text_similarity"]),
            "captions": list(group["caption"]),
            "image_names": [Path(p).name for p in group["path"]],
        }
        for prompt, group in readable.groupby("prompt", sort=False)
    }


def blip_similarity(
    images_dir: str | Path,
    dataset: str,
    methods: list[str] | None = None,
    *,
    captioner: Captioner,
    scorer: ClipScorer,
    metrics_dir: str | Path | None = None,
    batch_size: int = 16,
) -> MetricResult:
    """BLIP caption text-text similarity; writes ``<metrics_dir>/<method>/blip_{raw,aggregated}_metrics.json``."""
    cache = score_cache_path(metrics_dir, "blip", {"captioner": captioner.name, "model": scorer.name})
    compute = partial(blip_frame, captioner=captioner, scorer=scorer, batch_size=batch_size)
    frame = cached_frame(collect_images(images_dir, dataset, methods), compute, cache)
    result = MetricResult(frame, {})
    for method, group in frame.groupby("method", sort=False):
        result.aggregates[method] = blip_aggregates(group)
        if metrics_dir is not None:
            folder = Path(metrics_dir) / method
            result.files.append(write_json(_raw_records(group), folder / "blip_raw_metrics.json"))
            result.files.append(write_json(result.aggregates[method], folder / "blip_aggregated_metrics.json"))
    return result
