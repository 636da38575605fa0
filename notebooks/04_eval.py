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
# The BLIP captioner is transformers' `Salesforce/blip-image-captioning-base` unless `-p captioner lavis` (paper
# profile) asks for A&E's own LAVIS `blip_caption`/`base_coco`, which runs in its own environment (`make lavis`). The
# two are close but not bit-identical: compare methods under one captioner, which every output names.
#
# Each table cell is the metric with a 95% bootstrap confidence interval over prompts. The per-method JSON files with
# the original scripts' names and keys go to `reports/metrics/<dataset>/<method>/`.
#
# In the smoke profile on the toy world, a paper set means its toy counterpart (`-p dataset mscoco` scores
# `toy_mscoco`, and the provenance says so), and every metric runs with the toy world's own models: its CLIP, its
# BLIP captioner (trained on its scenes) and its exact colour-and-shape detector. Those numbers describe the toy world,
# never Stable Diffusion. Without toy weights, smoke falls back to random tiny models, which only test the plumbing.

# %% tags=["parameters"]
dataset = "mscoco"  # a prompt set, or a list of them; in the toy profile a paper set means its toy counterpart
methods = ["sd", "ae"]
profile = "smoke"
reports_dir = "../reports"
images_dir = None  # None: <reports_dir>/images/<resolved profile> (chapter 2), a few generated here if empty
scale = "paper"  # paper profile: the images a set needs are chapter 2's at this scale ("paper" or "quick")
seeds = None  # seeds to generate when images_dir holds none; None: paper: the scale's, else "0-1" (toy: held-out seeds)
limit = None  # prompts to generate when images_dir holds none; None: the scale's (paper: all), else 3
steps = None  # denoising steps for those images; None: 4 (tiny), 25 (toy), the scale's (paper: 50)
weights = None  # the generator's SD weights (paper profile)
precision = "fp32"  # paper: the SD weights' dtype, "fp32" (A&E's run.py) or "fp16" (faster, may differ slightly)
clip_weights = None  # paper: folder or file with open_clip ViT-B-16 OpenAI weights (None: the HF cache)
blip_weights = None  # paper: a Salesforce/blip-image-captioning-base folder (None: the HF cache)
captioner = "transformers"  # "transformers": transformers BLIP; "lavis" (paper): A&E's own LAVIS base_coco (make lavis)
detector_weights = None  # paper: a transformers COCO detector folder (None: PekingU/rtdetr_r101vd_coco_o365, HF cache)
original_counting = False  # True: the original scripts' counting (see fidelity_lib.metrics docstrings)
n_boot = 2000

# %%
from fidelity_lib.book import check_parameters

check_parameters(
    globals(), dataset=(str, list), methods=(list, str), profile=str, reports_dir=str, images_dir=(str, None),
    scale=str, seeds=(str, int, None), limit=(int, None), steps=(int, None), weights=(str, None), clip_weights=(str, None),
    blip_weights=(str, None), captioner=str, detector_weights=(str, None), original_counting=bool, n_boot=int, precision=str,
)

# %%
from pathlib import Path

import pandas as pd

import fidelity_lib
from fidelity_lib.chapters import (
    chapter_seeds, chapter_steps, eval_set_images, generation_inputs, manifest_provenance, paper_scale, toy_headline_comparisons,
)
from fidelity_lib.components import load_captioner, load_detector, load_metric_clip, load_pipeline, resolve_profile
from fidelity_lib.datasets import book_records, set_for_profile
from fidelity_lib.generate import generate, parse_seeds
from fidelity_lib.metrics import ClipScorer, metric_figure, metric_table, metrics_for, wide_table
from fidelity_lib.metrics.suite import score_set
from fidelity_lib.report import save_figure, save_table

NOTEBOOKS = Path(fidelity_lib.__file__).resolve().parent.parent / "notebooks"
reports = NOTEBOOKS / reports_dir  # relative paths mean the same folder whatever the working directory
resolved, run_scale = resolve_profile(profile), paper_scale(scale)
images = NOTEBOOKS / images_dir if images_dir else reports / "images" / resolved
methods = [methods] if isinstance(methods, str) else list(methods)
sets = {name: set_for_profile(name, resolved) for name in ([dataset] if isinstance(dataset, str) else dataset)}
seeds = parse_seeds(str(seeds)) if seeds is not None else None if resolved == "paper" else chapter_seeds(resolved, 2)
steps = steps or (run_scale.steps if resolved == "paper" else chapter_steps(resolved, tiny_steps=4))
image_size, scale_note = (run_scale.image_size, f"; {run_scale.describe()}") if resolved == "paper" else (None, "")
print(f"sets {sets}, methods {methods}, profile {profile} -> {resolved}, images {images.resolve()}")

# %% [markdown]
# ## Images
# Each set's first `limit` prompts (toy: of the held-out split) need an image per seed and method; the missing ones
# are made here with the generator. In the paper profile the prompts and seeds are the set's part of chapter 2 at
# this `scale` (A&E sets: seeds 0-63; gpt, mscoco, vsr: seed 1), so a finished chapter 2 leaves nothing to make.
# Every image of the set's prompts found in the folder is scored.

# %% tags=["run-log"]
from fidelity_lib.generate import image_path, is_valid_image

for set_name in sets.values():
    set_limit, set_seeds = eval_set_images(set_name, resolved, run_scale, limit, seeds)
    records, options = generation_inputs(book_records([set_name], set_limit), resolved, steps, image_size, reports / "layouts")
    wanted = [(m, r.prompt, s) for m in methods for r in records for s in set_seeds]
    if all(is_valid_image(image_path(images, *item)) for item in wanted):
        continue
    pipe = load_pipeline(profile, weights=weights, precision=precision)
    for method in methods:
        summary = generate(pipe, method, records, set_seeds, images, profile=profile, options=options, progress=False)
        print(f"{set_name} {method}: {summary.written} images written in {summary.seconds:.1f} s")

# %% [markdown]
# ## Metrics

# %%
scorer = ClipScorer(load_metric_clip(profile, clip_weights))
caption_model = load_captioner(profile, blip_weights, captioner=captioner)
detected = [name for name in sets.values() if "object_accuracy" in metrics_for(name)]
detector = load_detector(profile, detector_weights) if detected else None
frames = {
    set_name: score_set(images, set_name, methods, scorer, caption_model, detector, reports / "metrics" / set_name, original_counting)
    for set_name in sets.values()
}
unreadable = pd.concat(f for by_family in frames.values() for f in by_family.values())
unreadable = unreadable[unreadable["error"].notna()][["path", "error"]].drop_duplicates()
print(f"CLIP {scorer.name}; captioner {caption_model.name}; detector {detector.name if detector else 'not used'}")
print(f"{len(unreadable)} unreadable image(s), reported and left out of the means")
unreadable

# %% [markdown]
# ## Tables and figures
# One table per set (method x metric), with its CIs and counts beside it, and a figure of the same numbers.

# %%
for name, set_name in sets.items():
    table = metric_table(frames[set_name], set_name, n_boot)
    shown = "" if name == set_name else f" (the toy counterpart of {name})"
    provenance = manifest_provenance(  # weights and seeds: those of the set's images in the manifest
        images, set_name, methods, profile=resolved,
        detector=detector.name if "detection" in frames[set_name] else "not used",
        notes=f"requested profile {profile}; set {set_name}{shown}; CLIP {scorer.name}; captioner {caption_model.name}; counting "
        f"{'original' if original_counting else 'fixed'}; 95% bootstrap CIs over prompts ({n_boot} resamples){scale_note}",
    )
    save_table(wide_table(table), set_name, provenance, reports, title=f"{set_name}{shown}: method x metric")
    save_table(table, f"{set_name}_ci", provenance, reports, title=f"{set_name}: values, CIs and counts")
    figure = metric_figure(table, f"{set_name}; CLIP {scorer.name}; detector {provenance.detector}")
    save_figure(figure, f"{set_name}_metrics", provenance, reports, title=f"{set_name}{shown}: method x metric")
    print(provenance.line(run=False))
    display(wide_table(table))

# %% [markdown]
# ## On the toy world: the paired comparisons these few images cannot make
# The book scores a handful of prompts per set, so the cells above and chapter 5's paper-shaped tables show "too few
# to compare" under 10 prompts. The toy world's held-out headline (chapter 0) already compared every method with SD on
# the same (prompt, seed) pairs, hundreds per set, with the exact detector; its paired differences for these sets follow,
# with the images each method repaired (SD failed, the method succeeded) and broke (the reverse). Presence counts an
# object by its colour; colour+shape asks for both, and shape errors that neither method fixes keep it low.

# %%
if resolved == "toy":
    comparisons, headline_provenance = toy_headline_comparisons(list(sets.values()))
    save_table(comparisons, "toy_headline_comparisons", headline_provenance, reports,
               title="Toy world, held-out headline: paired differences against SD for the sets scored here")
    display(comparisons)
else:
    print(f"profile {resolved}: the toy world's headline does not apply; the tables above are this run's comparisons")
