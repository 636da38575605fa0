# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: fidelity-book (.venv)
#     language: python
#     name: fidelity-book
# ---

# %% [markdown]
# # 4. Evaluation: CLIP image-text, BLIP caption text-text, detector object and relation accuracy
#
# The metrics of both papers over a folder of generated images (`<images_dir>/<method>/<prompt>/<seed>.png`):
#
# - **CLIP image-text similarity** (A&E): ViT-B/16 cosine between the image and the 80-ImageNet-template embedding of the
#   full prompt, and the minimum over the prompt's two halves (split on " and ", else " with "); flat means over images.
# - **BLIP text-text similarity** (A&E): CLIP similarity between a BLIP caption of the image and the prompt.
# - **Object accuracy** and **relation accuracy** (spatial-temporal): a COCO detector (score > 0.4 for objects, > 0.5 for
#   relations, box-centre rules); relation accuracy as in the original scripts (only relations whose two objects were
#   found) and unconditionally (a missing object counts as wrong).
#
# Each table cell is the metric with a 95% bootstrap confidence interval over prompts. The per-method JSON files with
# the original scripts' names and keys go to `reports/metrics/<dataset>/<method>/`. In the smoke profile the models are
# random or toy-world ones: the numbers test the plumbing, never Stable Diffusion.

# %% tags=["parameters"]
dataset = "mscoco"
methods = ["sd", "ae"]
profile = "smoke"
reports_dir = "../reports"
images_dir = None  # None: <reports_dir>/images/<resolved profile> (chapter 2), a few generated here if empty
seeds = "0-1"
limit = 3  # prompts to generate when images_dir holds none
steps = 4  # denoising steps for those images
weights = None  # the generator's SD weights (paper profile)
clip_weights = None  # paper: folder or file with open_clip ViT-B-16 OpenAI weights (None: the HF cache)
blip_weights = None  # paper: a Salesforce/blip-image-captioning-base folder (None: the HF cache)
detector_weights = None  # paper: a transformers COCO detector folder (None: PekingU/rtdetr_r101vd_coco_o365, HF cache)
original_counting = False  # True: the original scripts' counting (see fidelity_lib.metrics docstrings)
n_boot = 2000

# %%
from fidelity_lib.book import check_parameters

check_parameters(
    globals(), dataset=str, methods=list, profile=str, reports_dir=str, images_dir=(str, None), seeds=(str, int), limit=int,
    steps=int, weights=(str, None), clip_weights=(str, None), blip_weights=(str, None),
    detector_weights=(str, None), original_counting=bool, n_boot=int,
)

# %%
import subprocess
import sys
from pathlib import Path

import pandas as pd

import fidelity_lib
from fidelity_lib.metrics import (
    ClipScorer,
    NoImagesError,
    UnknownMethodError,
    blip_similarity,
    clip_score,
    collect_images,
    detection_score,
    load_captioner,
    load_clip,
    load_detector,
    metric_figure,
    metric_table,
    metrics_for,
    wide_table,
)
from fidelity_lib.generate import read_manifest
from fidelity_lib.models import resolve_profile
from fidelity_lib.report import Provenance, save_figure, save_table

NOTEBOOKS = Path(fidelity_lib.__file__).resolve().parent.parent / "notebooks"
reports = NOTEBOOKS / reports_dir  # relative paths mean the same folder whatever the working directory
images = NOTEBOOKS / images_dir if images_dir else reports / "images" / resolve_profile(profile)
methods = [methods] if isinstance(methods, str) else list(methods)
print(f"dataset {dataset}, methods {methods}, profile {profile} -> {resolve_profile(profile)}, images {images.resolve()}")

# %% [markdown]
# ## Images
# If the folder holds no images of this dataset for these methods, generate a few with the generation command-line tool.

# %%
def has_images() -> bool:
    try:
        collect_images(images, dataset, methods)
    except (NoImagesError, UnknownMethodError):
        return False
    return True


if not has_images():
    for method in methods:
        command = [sys.executable, "-m", "fidelity_lib.generate", "--method", method, "--prompts", dataset, "--seeds", str(seeds),
                   "--limit", str(limit), "--out", str(images), "--profile", profile, "--steps", str(steps),
                   "--skip-long-prompts"]
        command += ["--weights", str(weights)] if weights else []
        print(" ".join(command[1:]))
        subprocess.run(command, check=True)
entries = collect_images(images, dataset, methods)
lines = [line for line in read_manifest(images) if line.get("set") in (None, dataset) and line.get("method") in methods]
weights_id = ", ".join(sorted({str(line.get("weights")) for line in lines})) or "unknown (no manifest.jsonl)"
image_seeds = ",".join(sorted({entry.seed for entry in entries}, key=lambda s: (len(s), s)))
print(f"{len(entries)} images, {len({e.record.index for e in entries})} prompts, seeds {image_seeds}, weights {weights_id}")

# %% [markdown]
# ## Metrics

# %%
wanted = metrics_for(dataset)
metrics_dir = reports / "metrics" / dataset
scorer = ClipScorer(load_clip(profile, clip_weights))
frames = {"clip": clip_score(images, dataset, methods, scorer=scorer, metrics_dir=metrics_dir, original_counting=original_counting).frame}
captioner = load_captioner(profile, blip_weights)
frames["blip"] = blip_similarity(images, dataset, methods, captioner=captioner, scorer=scorer, metrics_dir=metrics_dir).frame
detector_name = "not used"
if "object_accuracy" in wanted:
    detector = load_detector(profile, detector_weights)
    detector_name = detector.name
    frames["detection"] = detection_score(images, dataset, methods, detector=detector, metrics_dir=metrics_dir, original_counting=original_counting).frame
unreadable = pd.concat(frames.values())[lambda f: f["error"].notna()][["path", "error"]].drop_duplicates()
print(f"CLIP {scorer.name}; captioner {captioner.name}; detector {detector_name}")
print(f"{len(unreadable)} unreadable image(s), reported and left out of the means")
unreadable

# %% [markdown]
# ## Table and figure

# %%
table = metric_table(frames, dataset, n_boot)
provenance = Provenance(
    profile=f"{profile} -> {resolve_profile(profile)}",
    weights=weights_id,
    seeds=image_seeds,
    detector=detector_name,
    notes=f"CLIP {scorer.name}; captioner {captioner.name}; counting {'original' if original_counting else 'fixed'}; "
    f"95% bootstrap CIs over prompts ({n_boot} resamples)",
)
title = f"{dataset}: method x metric"
save_table(wide_table(table), dataset, provenance, reports, title=title)
save_table(table, f"{dataset}_ci", provenance, reports, title=f"{dataset}: values, CIs and counts")
figure = metric_figure(table, f"CLIP {scorer.name}; detector {detector_name}")
save_figure(figure, f"{dataset}_metrics", provenance, reports, title=title)
print(provenance.line())
wide_table(table)
