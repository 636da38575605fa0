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
# # 2. Generate: plain Stable Diffusion and Attend-and-Excite on the paper's prompt sets
#
# This chapter writes the images the evaluation (chapter 4) scores, in the A&E metrics layout
# `<images_dir>/<method>/<prompt>/<seed>.png`, with one line per image in `<images_dir>/manifest.jsonl`
# (prompt, set, seed, method, settings, profile, weights, seconds and each method's extras). The same
# `fidelity_lib.generate` does it from the command line:
#
# ```bash
# python -m fidelity_lib.generate --method ae --prompts ae_animal_animal --seeds 0-63 --out reports/images/paper --profile paper --weights ~/weights/stable-diffusion-v1-4
# ```
#
# Runs resume: an image that decodes and has its manifest line is never made twice. In the smoke profile the models are
# random or toy-world ones and a few prompts, seeds and steps are used; **paper** generates all 276 A&E prompts x 64 seeds
# with 50 PNDM steps (set `limit = None`, `seeds = "0-63"`, `steps = 50`, the defaults there).

# %% tags=["parameters"]
profile = "smoke"
reports_dir = "../reports"
weights = None  # paper: a Stable Diffusion folder or repo id in the local Hugging Face cache
seeds = None  # None: "0-1" (smoke, tiny, toy) or "0-63" (paper)
limit = None  # prompts per set; None: 1 (smoke, tiny, toy) or all (paper)
steps = None  # denoising steps; None: 10 (smoke, tiny, toy) or 50 (paper)
images_dir = None  # None: <reports_dir>/images/<resolved profile>, which chapter 4 reads

# %%
from fidelity_lib.book import check_parameters

check_parameters(
    globals(), profile=str, reports_dir=str, weights=(str, None), seeds=(str, None), limit=(int, None),
    steps=(int, None), images_dir=(str, None),
)

# %%
from pathlib import Path

import fidelity_lib
from fidelity_lib.datasets import AE_SETS, load_prompts
from fidelity_lib.generate import GenerationOptions, generate, parse_seeds, read_manifest
from fidelity_lib.models import load_pipeline, resolve_profile
from fidelity_lib.report import Provenance, save_figure

NOTEBOOKS = Path(fidelity_lib.__file__).resolve().parent.parent / "notebooks"
reports = NOTEBOOKS / reports_dir  # relative paths mean the same folder whatever the working directory
resolved = resolve_profile(profile)
paper = resolved == "paper"
seeds = parse_seeds(seeds or ("0-63" if paper else "0-1"))
limit = limit if limit is not None else (None if paper else 1)
steps = steps or (50 if paper else 10)
images = Path(images_dir) if images_dir else reports / "images" / resolved
pipe = load_pipeline(profile, weights=weights)
print(f"profile {profile} -> {resolved}, weights {pipe.weights_id}, device {pipe.device}")
print(f"seeds {seeds[0]}..{seeds[-1]} ({len(seeds)}), prompts per set {limit or 'all'}, {steps} steps -> {images.resolve()}")

# %% [markdown]
# ## Attend-and-Excite
# The three A&E sets (animal-animal, animal-object, object-object; 66 + 144 + 66 prompts), each with its published
# subject token indices, for plain SD (`sd`) and Attend-and-Excite with the paper defaults (`ae`). Both start from the
# same noise: `torch.Generator("cpu").manual_seed(seed)` through the pipeline's own latent preparation.

# %%
ae_records = [record for name in AE_SETS for record in load_prompts(name)[:limit]]
options = GenerationOptions(steps=steps)
for method in ("sd", "ae"):
    summary = generate(pipe, method, ae_records, seeds, images, profile=profile, options=options, progress=False)
    print(f"{method}: {summary.written} written, {summary.skipped} already there, {summary.seconds:.1f} s")

# %%
import pandas as pd

lines = [line for line in read_manifest(images) if line["method"] in ("sd", "ae") and line["set"] in AE_SETS]
table = pd.DataFrame(
    {
        "set": line["set"],
        "method": line["method"],
        "seconds": line["seconds"],
        "refinement iterations": sum(line["extras"].get("refinement_iterations", {}).values()),
        "first loss": (line["extras"].get("losses") or [None])[0],
    }
    for line in lines
)
table.groupby(["set", "method"]).mean(numeric_only=True).round(3)

# %% [markdown]
# ### Baseline vs Attend-and-Excite
# One row per prompt: each seed's SD image next to its A&E image (same starting noise). On the tiny random-weight
# models the cross-attention is almost uniform (max attention about 1/70 after A&E's x100 softmax), refinement runs its
# 20 iterations at every checkpoint and the gradient steps barely move the latent, so the two columns look alike: this
# checks the plumbing. The toy world and Stable Diffusion are where A&E changes the images.

# %%
import matplotlib.pyplot as plt
from PIL import Image

from fidelity_lib.generate import image_path

shown_records = [load_prompts(name)[0] for name in AE_SETS]
shown_seeds = seeds[:2]
fig, axes = plt.subplots(
    len(shown_records), 2 * len(shown_seeds), figsize=(2.2 * 2 * len(shown_seeds), 2.4 * len(shown_records)), squeeze=False
)
for row, record in enumerate(shown_records):
    for column, (seed, method) in enumerate((seed, method) for seed in shown_seeds for method in ("sd", "ae")):
        axis = axes[row][column]
        axis.imshow(Image.open(image_path(images, method, record.prompt, seed)))
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(f"{'SD' if method == 'sd' else 'A&E'}, seed {seed}", fontsize=8)
        if column == 0:
            axis.set_ylabel(record.prompt, fontsize=8)
caption = f"Plain SD vs Attend-and-Excite, {steps} steps - profile {profile} ({resolved}), weights {pipe.weights_id}"
fig.suptitle(caption, fontsize=9)
fig.tight_layout()
provenance = Provenance(profile=resolved, weights=pipe.weights_id, seeds=",".join(map(str, shown_seeds)), notes=f"{steps} steps")
save_figure(fig, "02_generate_ae_grid", provenance, reports, "Plain SD vs Attend-and-Excite on the A&E sets")
print(caption)

# %% [markdown]
# ## Spatial-temporal control
# GPT sentences with plain SD (`sd`), spatial-temporal control (`st`: one disc of radius 0.2 per object from the layout
# predictor, per-step weights optimised through CLIP in 3 passes) and both methods in one run (`st+ae`), all from the same
# noise. The layouts come from `data/layouts/gpt.json` (chapter 1) when they were written for this kind of profile,
# otherwise from the layout predictor. The smoke profile uses 2 sentences and 4 steps, because each ST image costs about
# ten plain samplings.

# %%
from fidelity_lib.datasets import load_prompt_set

st_records = load_prompt_set("gpt")[: (limit or 500) if paper else 2]
st_seeds = seeds if paper else seeds[:1]
st_options = GenerationOptions(steps=steps if paper else min(steps, 4))
for method in ("sd", "st", "st+ae"):
    summary = generate(pipe, method, st_records, st_seeds, images, profile=profile, options=st_options, progress=False)
    print(f"{method}: {summary.written} written, {summary.skipped} already there, {summary.seconds:.1f} s")

# %% [markdown]
# ### Baseline vs ST vs ST+A&E, with the predicted regions
# Each object's disc (radius 0.2 of the image side) is drawn over the image, with the object's phrase.

# %%
import textwrap

st_lines = {(line["prompt"], line["seed"]): line for line in read_manifest(images) if line["method"] == "st"}
shown = [(record, seed) for record in st_records[:4] for seed in st_seeds[:1] if (record.prompt, seed) in st_lines]
fig, axes = plt.subplots(len(shown), 3, figsize=(7.5, 2.7 * len(shown)), squeeze=False)
for row, (record, seed) in enumerate(shown):
    layout = st_lines[(record.prompt, seed)]["extras"]["layout"]
    for column, method in enumerate(("sd", "st", "st+ae")):
        axis = axes[row][column]
        image = Image.open(image_path(images, method, record.prompt, seed))
        axis.imshow(image)
        for index, placement in enumerate(layout):
            centre = (placement["x"] * image.width, placement["y"] * image.height)
            axis.add_patch(plt.Circle(centre, 0.2 * image.width, fill=False, color=f"C{index}", linewidth=1.5))
            axis.annotate(placement["phrase"], centre, color=f"C{index}", fontsize=7, ha="center")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title({"sd": "SD", "st": "ST", "st+ae": "ST + A&E"}[method] + f", seed {seed}", fontsize=8)
        if column == 0:
            axis.set_ylabel(textwrap.fill(record.prompt, 30), fontsize=7)
caption = f"Plain SD vs spatial-temporal control vs ST + A&E, {st_options.steps} steps - profile {profile} ({resolved})"
fig.suptitle(caption, fontsize=9)
fig.tight_layout()
st_provenance = Provenance(profile=resolved, weights=pipe.weights_id, seeds=",".join(map(str, st_seeds)), notes=f"{st_options.steps} steps")
save_figure(fig, "02_generate_st_grid", st_provenance, reports, "Plain SD vs spatial-temporal control vs ST + A&E, with regions")
print(caption)

# %% [markdown]
# ### The learned weights over the steps
# The weights after the last update (one curve per object; the start value is 5/N). With the official Adam settings
# (lr 0.005, two effective updates) they move by at most about 0.01 from 5/N, which is what the original does
# (spec 1.7).

# %%
fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 2.8), squeeze=False)
for axis, (record, seed) in zip(axes[0], shown):
    extras = st_lines[(record.prompt, seed)]["extras"]
    for index, (placement, weights_of_object) in enumerate(zip(extras["layout"], extras["weights"])):
        axis.plot(weights_of_object, color=f"C{index}", label=placement["phrase"])
    axis.set(xlabel="step", ylabel="weight")
    axis.set_title(textwrap.fill(record.prompt, 40), fontsize=7)
    axis.legend(fontsize=7)
fig.tight_layout()
save_figure(fig, "02_generate_st_weights", st_provenance, reports, "Spatial-temporal weights over the steps")
