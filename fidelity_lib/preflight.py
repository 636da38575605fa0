"""Check every component the paper book loads before a GPU job starts: in seconds, loading no model, writing nothing.

Each check looks where its loader will look (a folder, or the local Hugging Face cache at call time, ``HF_HUB_CACHE`` /
``HF_HOME``) for the files that loader needs, and names the command that downloads what is missing: the same commands
the loaders' own errors name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache

from fidelity_lib.clip import OPENAI_FILES, OPENAI_HF_REPOS
from fidelity_lib.components import CAPTIONERS
from fidelity_lib.conditioning import FAMILIES
from fidelity_lib.layout.data import CocoAnnotationsMissingError, coco_files
from fidelity_lib.layout.model import PAPER_ENCODER
from fidelity_lib.metrics.blip_similarity import BLIP_REPO_ID
from fidelity_lib.metrics.clip_score import CLIP_ARCH as METRIC_CLIP_ARCH
from fidelity_lib.metrics.detection import RTDETR_REPO_ID
from fidelity_lib.metrics.lavis import LAVIS_VENV
from fidelity_lib.models import PIPELINE_CLASSES, SD14_REPO_ID, is_repo_id
from fidelity_lib.spacetime import PAPER_CLIP_ARCH as LOSS_CLIP_ARCH

SD_WEIGHTS = "Stable Diffusion weights"
METRIC_CLIP = "CLIP ViT-B/16 (metrics)"
LOSS_CLIP = "CLIP ViT-B/32 (ST loss)"
BLIP_CAPTIONER = "BLIP captioner"
LAVIS_ENVIRONMENT = "LAVIS captioner environment"
LAVIS_CHECKPOINT = "LAVIS captioner checkpoint"
LAVIS_TOKENIZER = "LAVIS captioner tokenizer"
RTDETR_DETECTOR = "RT-DETR detector"
ROBERTA_ENCODER = "roberta-base (layout encoder)"
COCO_ANNOTATIONS = "COCO 2017 annotations"

DOWNLOAD = "huggingface-cli download"  # the command every loader's error names
SIZES = {  # approximate download sizes, for the table's comments
    SD14_REPO_ID: "the book loads ~4.3 GB of it: unet 3.4, text encoder 0.5, vae 0.3",
    OPENAI_HF_REPOS[METRIC_CLIP_ARCH]: "~600 MB",
    OPENAI_HF_REPOS[LOSS_CLIP_ARCH]: "~600 MB",
    BLIP_REPO_ID: "~1 GB model",
    RTDETR_REPO_ID: "~0.3 GB",
    PAPER_ENCODER: "~0.5 GB model",
}
# Each requirement is a tuple of alternatives, one of which must be there; "a + b" is an alternative of two files.
MODEL_WEIGHTS = (("config.json",), ("model.safetensors", "pytorch_model.bin"))
DIFFUSERS_WEIGHTS = (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"))
CLIP_TOKENIZER_FILES = (("vocab.json + merges.txt", "tokenizer.json"),)  # SD repos: the first; a save: the second
SD_COMPONENT_FILES = {
    "unet": DIFFUSERS_WEIGHTS, "vae": DIFFUSERS_WEIGHTS, "text_encoder": MODEL_WEIGHTS, "tokenizer": CLIP_TOKENIZER_FILES,
    "scheduler": (("scheduler_config.json",),),
}
SDXL_COMPONENT_FILES = SD_COMPONENT_FILES | {"text_encoder_2": MODEL_WEIGHTS, "tokenizer_2": CLIP_TOKENIZER_FILES}
BLIP_FILES = (
    *MODEL_WEIGHTS, ("preprocessor_config.json", "processor_config.json"), ("tokenizer.json", "vocab.txt"),
)
RTDETR_FILES = (*MODEL_WEIGHTS, ("preprocessor_config.json", "processor_config.json"))
ROBERTA_FILES = (*MODEL_WEIGHTS, ("tokenizer.json", "vocab.json + merges.txt"))
# LAVIS 1.0.2 (its only release, pinned in the Makefile), lavis/configs/models/blip_caption_base_coco.yaml: load_finetuned
# is on, so the worker reads this checkpoint (lavis_worker.required_checkpoint) from the torch hub folder's checkpoints/.
LAVIS_CHECKPOINT_URL = (
    "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP/blip_coco_caption_base.pth"
)
LAVIS_TOKENIZER_REPO = "bert-base-uncased"
LAVIS_TOKENIZER_FILES = (("vocab.txt",), ("tokenizer_config.json",), ("config.json",))  # what the worker's message fetches
COCO_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"


@dataclass(frozen=True)
class ComponentCheck:
    """One component: where its loader looks, whether the files it needs are there, and how to get them."""

    component: str
    looked: str
    found: bool
    download: str
    reason: str = ""


class MissingComponentsError(RuntimeError):
    """Some paper components are not on disk; the message names each one and the command that gets it."""


def hub_cache() -> str:
    """The Hugging Face cache folder the loaders use now (HF_HUB_CACHE / HF_HOME, read at call time)."""
    return str(hub_constants.HF_HUB_CACHE)


def with_size(command: str, repo_id: str) -> str:
    """The command, with the repo's approximate size as a shell comment when known."""
    return f"{command}  # {SIZES[repo_id]}" if repo_id in SIZES else command


def missing_requirements(requirements: tuple[tuple[str, ...], ...], exists: Callable[[str], object]) -> list[str]:
    """The requirements none of whose alternatives ``exists`` (every file of it), worded for a reason."""
    return [
        " or ".join(alternatives) for alternatives in requirements
        if not any(all(exists(name) for name in alternative.split(" + ")) for alternative in alternatives)
    ]


def cached_in_hub(repo_id: str, filename: str) -> bool:
    """Whether ``filename`` of ``repo_id`` (main) is in the local Hugging Face cache."""
    return isinstance(try_to_load_from_cache(repo_id, filename), str)


def check_hub_repo(component: str, repo_id: str, requirements: tuple[tuple[str, ...], ...], download: str) -> ComponentCheck:
    """A repo in the HF cache that a loader reads with ``from_pretrained(repo_id, local_files_only=True)``."""
    missing = missing_requirements(requirements, lambda name: cached_in_hub(repo_id, name))
    reason = f"not in the cache: {', '.join(missing)}" if missing else ""
    return ComponentCheck(component, f"HF cache {hub_cache()} ({repo_id})", not missing, download, reason)


def check_model_repo(component: str, repo_id: str, requirements: tuple[tuple[str, ...], ...]) -> ComponentCheck:
    """A whole repo a loader reads from the HF cache; downloaded with ``huggingface-cli download <repo id>``."""
    return check_hub_repo(component, repo_id, requirements, with_size(f"{DOWNLOAD} {repo_id}", repo_id))


def sd_file(source: str | Path, name: str) -> Path | None:
    """A file of the SD weights: ``source`` is a folder (Path) or a repo id in the HF cache (str); None when absent."""
    if isinstance(source, Path):
        return source / name if (source / name).is_file() else None
    cached = try_to_load_from_cache(source, name)
    return Path(cached) if isinstance(cached, str) else None


def check_sd_weights(weights: str | os.PathLike | None) -> ComponentCheck:
    """model_index.json and each component the book loads (config and weights), in a folder or the HF cache."""
    if weights is None or is_repo_id(weights):
        source = SD14_REPO_ID if weights is None else str(weights)
        looked, download = f"HF cache {hub_cache()} ({source})", with_size(f"{DOWNLOAD} {source}", source)
    else:
        source = Path(weights).expanduser()
        looked, download = str(source), with_size(f"{DOWNLOAD} {SD14_REPO_ID} --local-dir {source}", SD14_REPO_ID)
    index_file = sd_file(source, "model_index.json")
    if index_file is None:
        return ComponentCheck(SD_WEIGHTS, looked, False, download, "no model_index.json")
    try:
        index = json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        reason = f"model_index.json is unreadable ({type(error).__name__})"
        return ComponentCheck(SD_WEIGHTS, looked, False, download, reason)
    kind = index.get("_class_name")
    if kind not in PIPELINE_CLASSES:
        reason = f"model_index.json names a {kind!r}; the methods run on {', '.join(PIPELINE_CLASSES)}"
        return ComponentCheck(SD_WEIGHTS, looked, False, download, reason)
    if kind == StableDiffusionXLPipeline.__name__ and isinstance(source, Path):
        download = f"{DOWNLOAD} {FAMILIES['sdxl'].repo_id} --local-dir {source}"
    components = SDXL_COMPONENT_FILES if kind == StableDiffusionXLPipeline.__name__ else SD_COMPONENT_FILES
    missing = []
    for name, requirements in components.items():
        if not (isinstance(index.get(name), list) and index[name][0] is not None):
            missing.append(f"{name}/ (model_index.json does not list it)")
            continue
        absent = missing_requirements(requirements, lambda file: sd_file(source, f"{name}/{file}"))
        missing += [f"{name}/{files}" for files in absent]
    return ComponentCheck(SD_WEIGHTS, looked, not missing, download, f"missing {', '.join(missing)}" if missing else "")


def check_openai_clip(component: str, arch: str) -> ComponentCheck:
    """open_clip's OpenAI weights of ``arch`` in the HF cache, found as fidelity_lib.clip.openai_checkpoint finds them."""
    repo_id = OPENAI_HF_REPOS[arch]
    download = with_size(f"{DOWNLOAD} {repo_id} {OPENAI_FILES[0]}", repo_id)
    return check_hub_repo(component, repo_id, (OPENAI_FILES,), download)


def check_lavis() -> list[ComponentCheck]:
    """LAVIS's own environment, the checkpoint its worker reads from the torch hub folder, and its BERT tokenizer."""
    python = LAVIS_VENV / "bin" / "python"
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / Path(LAVIS_CHECKPOINT_URL).name
    tokenizer_files = " ".join(files[0] for files in LAVIS_TOKENIZER_FILES)
    return [
        ComponentCheck(LAVIS_ENVIRONMENT, str(LAVIS_VENV), python.exists(), f"make lavis  # in {LAVIS_VENV.parent}, ~6.8 GB",
                       "" if python.exists() else f"no {python}"),
        ComponentCheck(LAVIS_CHECKPOINT, str(checkpoint.parent), checkpoint.is_file(),
                       f"wget -P {checkpoint.parent} {LAVIS_CHECKPOINT_URL}  # ~0.9 GB",
                       "" if checkpoint.is_file() else f"no {checkpoint.name} (TORCH_HOME moves the folder)"),
        check_hub_repo(LAVIS_TOKENIZER, LAVIS_TOKENIZER_REPO, LAVIS_TOKENIZER_FILES,
                       f"{DOWNLOAD} {LAVIS_TOKENIZER_REPO} {tokenizer_files}  # < 1 MB"),
    ]


def check_coco(coco_dir: str | os.PathLike | None) -> ComponentCheck:
    """The captions and instances JSON files chapter 1 reads (fidelity_lib.layout.coco_files decides which)."""
    target = "~/data/coco" if coco_dir is None else str(coco_dir)
    download = f"wget {COCO_ANNOTATIONS_URL} && unzip annotations_trainval2017.zip -d {target}  # 241 MB"
    if coco_dir is None:
        return ComponentCheck(COCO_ANNOTATIONS, "no COCO folder given", False, download, "pass --coco-dir")
    try:
        files = coco_files(coco_dir)
    except CocoAnnotationsMissingError:
        root = Path(coco_dir).expanduser()
        folder = root / "annotations" if (root / "annotations").is_dir() else root
        reason = "no captions_<split>.json + instances_<split>.json pair (e.g. captions_train2017.json)"
        return ComponentCheck(COCO_ANNOTATIONS, str(folder), False, download, reason)
    return ComponentCheck(COCO_ANNOTATIONS, str(files["captions"].parent), True, download)


def paper_components(
    weights: str | os.PathLike | None = None, coco_dir: str | os.PathLike | None = None, captioner: str = "transformers"
) -> list[ComponentCheck]:
    """Every component the paper book's chapters load, checked without loading a model (seconds, writes nothing)."""
    if captioner not in CAPTIONERS:
        raise ValueError(f"Unknown captioner {captioner!r}: choose one of {', '.join(CAPTIONERS)}.")
    captioners = check_lavis() if captioner == "lavis" else [check_model_repo(BLIP_CAPTIONER, BLIP_REPO_ID, BLIP_FILES)]
    return [
        check_sd_weights(weights),
        check_openai_clip(METRIC_CLIP, METRIC_CLIP_ARCH),
        check_openai_clip(LOSS_CLIP, LOSS_CLIP_ARCH),
        *captioners,
        check_model_repo(RTDETR_DETECTOR, RTDETR_REPO_ID, RTDETR_FILES),
        check_model_repo(ROBERTA_ENCODER, PAPER_ENCODER, ROBERTA_FILES),
        check_coco(coco_dir),
    ]


def preflight_table(checks: list[ComponentCheck]) -> str:
    """One plain-text table: component | where it looked | found/MISSING | download command."""
    rows = [("component", "where it looked", "found", "download command")]
    rows += [(c.component, c.looked, "found" if c.found else "MISSING", c.download) for c in checks]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [" | ".join([*(cell.ljust(width) for cell, width in zip(row[:3], widths)), row[3]]) for row in rows]
    return "\n".join([lines[0], "-+-".join("-" * width for width in [*widths, len(rows[0][3])]), *lines[1:]])


def check_paper_run(
    weights: str | os.PathLike | None = None, coco_dir: str | os.PathLike | None = None, captioner: str = "transformers"
) -> list[ComponentCheck]:
    """Print the table; raise MissingComponentsError (message = the missing ones and their commands) if any is missing."""
    checks = paper_components(weights, coco_dir, captioner)
    print(preflight_table(checks))
    missing = [check for check in checks if not check.found]
    if missing:
        items = "\n".join(f"- {c.component}: {c.reason} (looked: {c.looked})\n    {c.download}" for c in missing)
        raise MissingComponentsError(
            f"{len(missing)} of the {len(checks)} paper components are missing; nothing was started. This book never "
            f"downloads weights: on a machine with internet access run\n{items}"
        )
    return checks
