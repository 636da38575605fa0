"""The one CLIP loader: open_clip models by architecture, from local weights only, plus small random-weight ones.

Two papers, two CLIPs: the spatial-temporal loss uses ViT-B/32 (the official ``plms.py`` calls ``clip.load("ViT-B/32")``)
and Attend-and-Excite's metrics ViT-B/16 (``metrics/compute_clip_similarity.py``). Both come through ``openai_clip``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from PIL import Image

from fidelity_lib.models import CLIP_VOCAB_SIZE, WeightsNotFoundError

OPENAI_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPENAI_HF_REPOS = {  # where open_clip keeps the OpenAI weights of each architecture on the Hugging Face Hub
    "ViT-B-16": "timm/vit_base_patch16_clip_224.openai",
    "ViT-B-32": "timm/vit_base_patch32_clip_224.openai",
}


@dataclass
class ClipModel:
    """An open_clip model with its image transform, tokenizer and a name for outputs."""

    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    name: str


def tiny_clip(seed: int = 0, image_size: int = 64, width: int = 64, layers: int = 2, quick_gelu: bool = True) -> ClipModel:
    """A small random-weight CLIP (ViT image tower, 77-token text tower, the real CLIP BPE), built offline."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=width,
        vision_cfg=open_clip.CLIPVisionCfg(layers=layers, width=width, head_width=width // 2, patch_size=image_size // 4, image_size=image_size),
        text_cfg=open_clip.CLIPTextCfg(context_length=77, vocab_size=CLIP_VOCAB_SIZE, width=width, heads=2, layers=layers),
        quick_gelu=quick_gelu,
    )
    preprocess = open_clip.image_transform(image_size, is_train=False)
    return ClipModel(model.eval(), preprocess, open_clip.tokenizer.SimpleTokenizer(), f"tiny-random-clip(seed={seed}, {image_size}px)")


def random_clip(arch: str, seed: int = 0) -> ClipModel:
    """An open_clip architecture with random weights (pretrained=None), built offline: benchmarks and shape checks."""
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None, force_quick_gelu=True)
    return ClipModel(model.eval(), preprocess, open_clip.get_tokenizer(arch), f"random-{arch}(seed={seed})")


def _missing_message(arch: str, where: str) -> str:
    repo = OPENAI_HF_REPOS[arch]
    return (
        f"CLIP {arch} OpenAI weights were not found in {where}. This book never downloads weights. On a machine with "
        f"internet access run\n    huggingface-cli download {repo} {OPENAI_FILES[0]}\n(fills the Hugging Face cache, "
        f"HF_HOME, default ~/.cache/huggingface) or add --local-dir ~/weights/{arch.lower()} and pass that folder as the "
        f"weights (a folder holding one of {', '.join(OPENAI_FILES)}, or that file)."
    )


def openai_checkpoint(arch: str, weights: str | os.PathLike | None = None) -> Path:
    """The OpenAI checkpoint of ``arch``: ``weights`` (a file, or a folder holding one) or the local HF cache."""
    if arch not in OPENAI_HF_REPOS:
        raise ValueError(f"No OpenAI CLIP is known for {arch!r}: choose one of {', '.join(OPENAI_HF_REPOS)}.")
    if weights is not None:
        path = Path(weights).expanduser()
        candidates = [path] if path.is_file() else [path / name for name in OPENAI_FILES]
        found = next((candidate for candidate in candidates if candidate.is_file()), None)
        if found is None:
            raise WeightsNotFoundError(_missing_message(arch, str(path)))
        return found
    from huggingface_hub import try_to_load_from_cache

    for name in OPENAI_FILES:
        cached = try_to_load_from_cache(OPENAI_HF_REPOS[arch], name)
        if isinstance(cached, str):
            return Path(cached)
    raise WeightsNotFoundError(_missing_message(arch, f"the local Hugging Face cache ({OPENAI_HF_REPOS[arch]})"))


def openai_clip(arch: str, weights: str | os.PathLike | None = None) -> ClipModel:
    """An OpenAI CLIP of ``arch`` (ViT-B-16, ViT-B-32) from local weights only (openai_checkpoint), QuickGELU as trained."""
    checkpoint = openai_checkpoint(arch, weights)
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(checkpoint), force_quick_gelu=True)
    return ClipModel(model.eval(), preprocess, open_clip.get_tokenizer(arch), f"open_clip {arch} openai ({checkpoint})")
