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
# # 0. Setup: which machine, which weights, which tokens
#
# Every chapter of this book runs in one of two profiles. **smoke** runs offline on a CPU in minutes, on the toy world
# when its weights are shipped and on tiny random-weight models otherwise: its numbers test the plumbing (and, in the
# toy world, the methods' effects), never Stable Diffusion. **paper** loads Stable Diffusion v1.4 from a local folder
# or the Hugging Face cache and needs a GPU.

# %% tags=["parameters"]
profile = "smoke"
weights = None
reports_dir = "../reports"

# %%
import platform

import diffusers
import torch
import transformers

from fidelity_lib.components import load_pipeline, resolve_profile
from fidelity_lib.models import clip_tokenizer

pipe = load_pipeline(profile, weights=weights)
print(f"profile      : {profile} -> {resolve_profile(profile)}")
print(f"weights      : {pipe.weights_id}")
print(f"device       : {pipe.device} ({'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or 'CPU'})")
print(f"torch        : {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}")
print(f"UNet params  : {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.2f} M")

# %% [markdown]
# ## Token indices
# Both methods address prompt words by their position in the CLIP token sequence. Index 0 is `<|startoftext|>`,
# so in "a cat and a dog" the subjects *cat* and *dog* sit at indices 2 and 5: the indices the A&E paper uses.

# %%
tokenizer = clip_tokenizer()
prompt = "a cat and a dog"
ids = tokenizer(prompt).input_ids
for index, token_id in enumerate(ids):
    print(f"{index:2d}  {token_id:6d}  {tokenizer.convert_ids_to_tokens(token_id)}")
assert ids == [49406, 320, 2368, 537, 320, 1929, 49407]
