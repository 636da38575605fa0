"""The one place that maps a profile to its components: the pipeline, the spatial-temporal loss's CLIP, the metrics'
CLIP, the captioner, the detector and the layout predictor.

- ``paper``: real weights from a folder or the local Hugging Face cache, never downloaded; a missing one raises
  WeightsNotFoundError saying what to download and where to put it.
- ``toy``: the toy world shipped in ``data/toyworld/`` (its UNet, CLIP, BLIP and exact detector).
- ``tiny``: random-weight components built from configs (plumbing only).
- ``smoke``: ``toy`` when the toy world's weights are shipped, otherwise ``tiny``.

Methods and metrics never choose a component themselves: they receive the ones these functions load.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from fidelity_lib.clip import ClipModel, openai_clip, tiny_clip
from fidelity_lib.conditioning import Pipeline
from fidelity_lib.detections import Detector
from fidelity_lib.layout.evaluate import LAYOUTS_DIR, load_layouts
from fidelity_lib.layout.predictor import LayoutPredictor, ObjectPlacement
from fidelity_lib.metrics.blip_similarity import Captioner, paper_blip, tiny_blip
from fidelity_lib.metrics.clip_score import CLIP_ARCH as METRIC_CLIP_ARCH
from fidelity_lib.metrics.detection import paper_detector, tiny_detector
from fidelity_lib.metrics.lavis import LavisCaptioner
from fidelity_lib.models import PROFILES, default_device, paper_pipeline, tiny_pipeline
from fidelity_lib.spacetime import PAPER_CLIP_ARCH as LOSS_CLIP_ARCH
from fidelity_lib.toyworld.captioner import toy_blip
from fidelity_lib.toyworld.detector import ToyDetector
from fidelity_lib.toyworld.model import toy_clip, toy_pipeline, weights_available


CAPTIONERS = ("transformers", "lavis")  # transformers BLIP (the default), or LAVIS itself in its own environment
# Paper pipeline weights: "fp32" as A&E's run.py L24 loads them (from_pretrained without a dtype; ST's txt2img-gpt.py
# also keeps fp32 weights, under autocast), or "fp16", the A&E README's faster option (results may differ slightly)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def resolve_profile(profile: str) -> str:
    """Map ``smoke`` to ``toy`` when the toy world's weights are shipped, else to ``tiny``."""
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}: choose one of {', '.join(PROFILES)}.")
    if profile == "smoke":
        return "toy" if weights_available() else "tiny"
    return profile


def pipeline_dtype(precision: str = "fp32") -> torch.dtype:
    """The paper pipeline's weight dtype for ``precision`` ("fp32" or "fp16", see PRECISIONS)."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}.")
    return PRECISIONS[precision]


def load_pipeline(
    profile: str = "smoke",
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
) -> Pipeline:
    """The profile's pipeline; ``weights`` is a folder or a repo id in the local cache and ``precision`` the weights'
    dtype (paper profile; the toy and tiny pipelines are fp32)."""
    resolved = resolve_profile(profile)
    dtype = pipeline_dtype(precision)
    device = torch.device(device) if device is not None else default_device()
    if resolved == "paper":
        pipe = paper_pipeline(weights, dtype)
    elif resolved == "toy":
        pipe = toy_pipeline()
    else:
        pipe = tiny_pipeline()
    pipe.profile = resolved
    return pipe.to(device)


def load_loss_clip(profile: str = "smoke", weights: str | os.PathLike | None = None) -> ClipModel:
    """The spatial-temporal loss's CLIP: paper ViT-B/32 OpenAI (local only), the toy CLIP, or a tiny 32-pixel one."""
    resolved = resolve_profile(profile)
    if resolved == "paper":
        return openai_clip(LOSS_CLIP_ARCH, weights)
    if resolved == "toy":
        return toy_clip()
    return tiny_clip(image_size=32, width=32, layers=1, quick_gelu=False)


@lru_cache(maxsize=2)
def shared_loss_clip(profile: str = "smoke") -> ClipModel:
    """load_loss_clip(profile), loaded once per process (the generator asks for it for every image)."""
    return load_loss_clip(profile)


def load_metric_clip(profile: str = "smoke", weights: str | os.PathLike | None = None) -> ClipModel:
    """The metrics' CLIP: paper ViT-B/16 OpenAI (local only), the toy CLIP, or a tiny random one."""
    resolved = resolve_profile(profile)
    if resolved == "paper":
        return openai_clip(METRIC_CLIP_ARCH, weights)
    if resolved == "toy":
        return toy_clip()
    return tiny_clip()


def load_captioner(
    profile: str = "smoke", weights: str | os.PathLike | None = None, device=None, captioner: str = "transformers"
) -> Captioner:
    """paper: BLIP base from a local folder or the HF cache; toy: the toy world's trained BLIP; tiny: a random BLIP.

    ``captioner="lavis"`` (paper profile only) is A&E's own LAVIS ``blip_caption``/``base_coco``, run by a worker in
    ``.venv-lavis`` (``make lavis``), which reads its checkpoint from LAVIS's cache, not from ``weights``.
    """
    if captioner not in CAPTIONERS:
        raise ValueError(f"Unknown captioner {captioner!r}: choose one of {', '.join(CAPTIONERS)}.")
    resolved = resolve_profile(profile)
    if captioner == "lavis":
        if resolved != "paper" or weights is not None:
            raise ValueError(
                f"The LAVIS captioner is the paper's model and reads its own checkpoint cache: use it with profile "
                f"'paper' and no BLIP weights (got profile {profile!r} -> {resolved}, weights {weights!r})."
            )
        return LavisCaptioner(device=None if device is None else str(device))
    if resolved == "paper":
        return paper_blip(weights, device)
    if resolved == "toy":
        return toy_blip(device=device)
    return tiny_blip(device=device)


def load_detector(profile: str = "smoke", weights: str | os.PathLike | None = None, device=None) -> Detector:
    """paper: RT-DETR (COCO) from a local folder or the HF cache; toy: the exact colour detector; tiny: a random RT-DETR."""
    resolved = resolve_profile(profile)
    if resolved == "paper":
        return paper_detector(weights, device)
    if resolved == "toy":
        return ToyDetector()
    return tiny_detector(device=device)


def layout_kind(profile: str) -> str:
    """Which trained layout predictor and layout files a profile uses: "paper" (COCO) or "smoke" (synthetic COCO)."""
    return "paper" if resolve_profile(profile) == "paper" else "smoke"


@lru_cache(maxsize=2)
def shipped_layout_predictor(profile: str = "smoke") -> LayoutPredictor | None:
    """The trained predictor in reports/layouts/predictor-<paper|smoke>/ for this profile, or None (chapter 1 trains it)."""
    folder = LAYOUTS_DIR / f"predictor-{layout_kind(profile)}"
    return LayoutPredictor.load(folder) if folder.is_dir() else None


@lru_cache(maxsize=8)
def shipped_layouts(set_name: str, profile: str = "smoke") -> dict[str, list[ObjectPlacement]]:
    """A prompt set's layouts in reports/layouts/<set>.json when written for this kind of profile, else empty."""
    try:
        written_for, layouts = load_layouts(set_name)
    except FileNotFoundError:
        return {}
    return layouts if layout_kind(written_for) == layout_kind(profile) else {}
