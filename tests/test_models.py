import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fidelity_lib.components import load_pipeline
from fidelity_lib.models import WeightsNotFoundError, clip_tokenizer, tiny_pipeline

DATA = Path(__file__).resolve().parent.parent / "data"


def paper_prompts() -> list[str]:
    prompts = [p for group in json.loads((DATA / "attend_and_excite" / "a.e_prompts.json").read_text()).values() for p in group]
    sentences = [line[len("Sentence: "):] for line in (DATA / "st_attn" / "gpt.txt").read_text().splitlines() if line.startswith("Sentence: ")]
    assert len(prompts) == 276 and len(sentences) == 500
    return prompts + sentences[:50]


def test_tokenizer_matches_open_clip_on_paper_prompts():
    import open_clip

    ours = clip_tokenizer()
    theirs = open_clip.get_tokenizer("ViT-B-32")
    for prompt in paper_prompts():
        ids = ours(prompt).input_ids
        reference = theirs([prompt])[0].tolist()
        assert ids == reference[: len(ids)] and all(i == 0 for i in reference[len(ids):]), prompt


def test_tokenizer_known_ids_and_padding():
    tokenizer = clip_tokenizer()
    assert tokenizer("a cat and a dog").input_ids == [49406, 320, 2368, 537, 320, 1929, 49407]
    padded = tokenizer("a cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(padded) == 77 and padded[3:] == [49407] * 74


def _image(pipe, seed: int) -> np.ndarray:
    out = pipe("a cat and a dog", num_inference_steps=3, generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    return out.images[0]


def test_tiny_pipeline_is_offline_and_deterministic(tiny_pipe):
    first, again, other = _image(tiny_pipe, 0), _image(tiny_pipe, 0), _image(tiny_pipe, 1)
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_tiny_pipeline_same_seed_same_weights():
    a, b, c = tiny_pipeline(0), tiny_pipeline(0), tiny_pipeline(1)
    wa, wb, wc = (next(p.unet.parameters()).detach() for p in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_tiny_pipeline_has_16x16_cross_attention(tiny_pipe):
    resolutions = set()
    hooks = [
        module.register_forward_hook(lambda m, args, kwargs, out: resolutions.add(args[0].shape[1]), with_kwargs=True)
        for name, module in tiny_pipe.unet.named_modules()
        if name.endswith("attn2")
    ]
    _image(tiny_pipe, 0)
    for hook in hooks:
        hook.remove()
    assert 16 * 16 in resolutions


def test_paper_profile_with_empty_folder_names_what_to_download(tmp_path):
    with pytest.raises(WeightsNotFoundError) as error:
        load_pipeline("paper", weights=tmp_path)
    message = str(error.value)
    assert "CompVis/stable-diffusion-v1-4" in message and "huggingface-cli download" in message and str(tmp_path) in message


def test_paper_profile_without_cache_names_the_repo():
    with pytest.raises(WeightsNotFoundError, match="stabilityai/stable-diffusion-2-1-base"):
        load_pipeline("paper", weights="stabilityai/stable-diffusion-2-1-base")


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="Unknown profile 'gpu'"):
        load_pipeline("gpu")
