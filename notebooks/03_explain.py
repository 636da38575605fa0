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
# # 3. Explain: where each subject token looks, before and after Attend-and-Excite
#
# Attend-and-Excite claims that a neglected subject is one whose token never gets a strong cross-attention peak, and
# that pushing the latent until every subject has one brings the subject back. This chapter shows the evidence for one
# prompt: the maps of each subject token over the denoising steps, per layer, with and without A&E, and the loss and
# max-attention curves the method optimises. On the toy world the prompt and seed are, unless given, the first pair of
# chapter 0b's signature rule: a held-out object-object pair on which the baseline lost an object.
#
# The maps are the **conditional branch's** softmax probabilities averaged over heads (and layers): at every pixel they
# sum to 1 over the key tokens (`fidelity_lib.explain` documents it; a test checks it). The official explanation notebook
# instead shows only the last step, averaged over the unconditional and conditional branches, with the photo's red and
# blue channels swapped; the "raw" panel below reproduces that average (with correct colours) for comparison.

# %% tags=["parameters"]
profile = "smoke"
reports_dir = "../reports"
weights = None
scale = "paper"  # paper profile: "paper" (50 steps) or "quick" (a CPU rehearsal: the quick scale's steps)
prompt = None  # None: "a cat and a dog" (paper, tiny), or (toy) the first held-out pair whose baseline lost an object (toyworld.signature)
token_indices = None  # None: the paper sets' indices, or the prompt's nouns (toy: the tokens its A&E setting excites)
seed = None  # None: 0, or (toy) the rule's pair's seed (the first held-out seed when a prompt is given)
steps = None  # None: the scale's (paper: 50), 25 (toy), 10 (tiny)
strip_steps = None  # None: five steps spread over the run
attention_res = None  # None: the model's (16x16 maps at 512 px on SD 1.x, 32x32 at 1024 on SDXL), or the toy world's setting

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

import fidelity_lib
from fidelity_lib.attend_excite import attend_and_excite, attention_layers
from fidelity_lib.chapters import chapter_steps, explain_inputs, paper_scale
from fidelity_lib.components import load_pipeline, resolve_profile
from fidelity_lib.conditioning import default_size
from fidelity_lib.explain import LatentRecorder, step_attention
from fidelity_lib.figures import attention_strip
from fidelity_lib.report import Provenance, save_figure

NOTEBOOKS = Path(fidelity_lib.__file__).resolve().parent.parent / "notebooks"
reports = NOTEBOOKS / reports_dir
resolved = resolve_profile(profile)
steps = steps or (paper_scale(scale).steps if resolved == "paper" else chapter_steps(resolved))
pipe = load_pipeline(profile, weights=weights)
prompt, token_indices, config, seed = explain_inputs(resolved, prompt, token_indices, attention_res, seed)
height, width = default_size(pipe)  # 512 on SD 1.x, 1024 on SDXL
resolution = attention_layers(pipe, height, width, config.attention_res)[0].resolution
strip_steps = list(strip_steps or np.linspace(0, steps, 5).round().astype(int))  # PNDM runs steps + 1 iterations
scale_note = f"; {paper_scale(scale).describe()}" if resolved == "paper" else ""
provenance = Provenance(profile=resolved, weights=pipe.weights_id, seeds=str(seed), notes=f'prompt "{prompt}", {steps} steps{scale_note}')
print(provenance.line(run=False))

# %%
runs = {}
for label, baseline in (("SD", True), ("A&E", False)):
    recorder = LatentRecorder(strip_steps)
    result = attend_and_excite(pipe, prompt, token_indices, seed=seed, config=config, num_inference_steps=steps,
                               baseline=baseline, step_callback=recorder)
    runs[label] = (result, step_attention(pipe, prompt, recorder.latents), recorder.latents)
subjects = runs["A&E"][0].token_indices
tokens = [token.removesuffix("</w>") for token in runs["A&E"][0].tokens]
print(f"subject tokens: {dict(zip(subjects, tokens))}; A&E refinement iterations: {runs['A&E'][0].refinement_iterations}")

# %% [markdown]
# ## The images and the subject maps over the steps
# Each row is one subject token under one method; each column one denoising step. Maps are the mean over the layers
# at A&E's resolution, drawn as attention probabilities on one colour scale (the colorbar), so a near-uniform map
# looks dark; each title gives the map's peak.

# %%
title = f'"{prompt}": subject attention at {resolution[0]}x{resolution[1]}, SD vs A&E'
figure = attention_strip(runs, subjects, tokens, strip_steps, resolution, title)
save_figure(figure, "explain_strip", provenance, reports, "Subject cross-attention over the denoising steps, SD vs A&E")
plt.show()

# %% [markdown]
# ## Per layer
# The same maps at the last strip step, one column per cross-attention layer (all resolutions), A&E run.

# %%
last = runs["A&E"][1][-1]
top = max(float(token_maps[..., index].max()) for token_maps in last.maps.values() for index in subjects)  # one scale
figure, axes = plt.subplots(len(subjects), len(last.maps), figsize=(1.7 * len(last.maps), 1.9 * len(subjects) + 0.6), squeeze=False)
for row, (index, token) in enumerate(zip(subjects, tokens)):
    for column, (name, token_maps) in enumerate(last.maps.items()):
        shown = axes[row, column].imshow(token_maps[..., index], cmap="magma", vmin=0, vmax=top)
        layer = last.layers[name]
        axes[row, column].set_title(f"{layer.place} {layer.resolution[0]}x{layer.resolution[1]}", fontsize=7)
        axes[row, column].set_xticks([]); axes[row, column].set_yticks([])
    axes[row, 0].set_ylabel(f"'{token}' #{index}", fontsize=9)
figure.colorbar(shown, ax=axes.ravel().tolist(), label="attention probability", orientation="horizontal", shrink=0.5, pad=0.08)
save_figure(figure, "explain_layers", provenance, reports, f"Subject attention per layer at step {last.step} (A&E)")
plt.show()

# %% [markdown]
# ## What A&E optimises: loss and max attention per guided step
# The loss is 1 minus the weakest subject's (smoothed, softmaxed) max attention; refinement steps at the threshold
# steps show up as jumps.

# %%
result = runs["A&E"][0]
curves = pd.DataFrame(
    [{"step": step, "token": f"'{token}' #{index}", "max attention": value}  # the index keeps two 'circle's apart
     for step, values in zip(result.guided_steps, result.max_attention) for index, token, value in zip(subjects, tokens, values)]
)
figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
sns.lineplot(data=curves, x="step", y="max attention", hue="token", ax=left)
left.set(title="max attention per subject", xlabel="guided denoising step", ylabel="max attention (probability)")
right.plot(result.guided_steps, result.losses, marker=".")
right.set(xlabel="guided denoising step", ylabel="loss (1 - weakest max attention)", title="A&E loss")
figure.tight_layout()
save_figure(figure, "explain_curves", provenance, reports, "A&E loss and per-subject max attention over the guided steps")
plt.show()

# %% [markdown]
# ## The original notebook's view, with correct colours
# The mean of the unconditional and conditional rows at the last step: the unconditional row attends to the empty
# prompt, so its maps dilute the subject's.

# %%
_, recorded_maps, recorded_latents = runs["A&E"]
last_latents = {strip_steps[-1]: recorded_latents[strip_steps[-1]]}
raw = step_attention(pipe, prompt, last_latents, branches="both")[0].mean_over_layers(resolution)
conditional = recorded_maps[-1].mean_over_layers(resolution)
top = max(float(maps[..., index].max()) for maps in (conditional, raw) for index in subjects)  # one colour scale
figure, axes = plt.subplots(2, len(subjects), figsize=(2.6 * len(subjects) + 1.2, 5.2), squeeze=False)
for column, (index, token) in enumerate(zip(subjects, tokens)):
    for row, (label, maps) in enumerate((("conditional", conditional), ("raw (uncond + cond)", raw))):
        shown = axes[row, column].imshow(maps[..., index], cmap="magma", vmin=0, vmax=top)
        axes[row, column].set_title(f"'{token}' #{index}, {label}\npeak {maps[..., index].max():.3f}", fontsize=7)
        axes[row, column].set_xticks([]); axes[row, column].set_yticks([])
figure.tight_layout(rect=(0, 0, 0.85, 1))
figure.colorbar(shown, ax=axes.ravel().tolist(), label="attention probability (mean over layers)", shrink=0.8)
save_figure(figure, "explain_raw_vs_conditional", provenance, reports, "Conditional maps vs the original notebook's averaged maps")
plt.show()
