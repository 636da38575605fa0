"""fidelity_lib.components maps each profile to its components, and says what to download when one is missing."""

import huggingface_hub
import pytest
import torch

from fidelity_lib import components

from fidelity_lib.clip import ClipModel, openai_checkpoint
from fidelity_lib.components import load_loss_clip, load_metric_clip, load_pipeline, pipeline_dtype, resolve_profile
from fidelity_lib.models import WeightsNotFoundError
from fidelity_lib.toyworld.model import weights_available


def test_smoke_resolves_to_the_toy_world_when_it_is_shipped():
    assert resolve_profile("smoke") == ("toy" if weights_available() else "tiny")
    assert resolve_profile("paper") == "paper"
    with pytest.raises(ValueError, match="smoke, tiny, toy, paper"):
        resolve_profile("gpu")


def test_the_two_papers_clips_are_two_architectures():
    loss, metric = load_loss_clip("tiny"), load_metric_clip("tiny")
    assert isinstance(loss, ClipModel) and isinstance(metric, ClipModel)
    assert tuple(loss.model.visual.image_size) == (32, 32) and tuple(metric.model.visual.image_size) == (64, 64)
    assert loss.tokenizer(["a cat"]).shape == (1, 77)


def test_paper_clips_are_never_downloaded_and_the_error_says_which_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(WeightsNotFoundError, match="vit_base_patch32_clip_224.openai"):
        load_loss_clip("paper")
    with pytest.raises(WeightsNotFoundError, match="vit_base_patch16_clip_224.openai"):
        load_metric_clip("paper", weights=tmp_path / "nothing")
    with pytest.raises(ValueError, match="ViT-B-16, ViT-B-32"):
        openai_checkpoint("RN50")


def test_a_checkpoint_file_or_its_folder_is_found(tmp_path):
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"")
    assert openai_checkpoint("ViT-B-32", tmp_path) == tmp_path / "open_clip_model.safetensors"
    assert openai_checkpoint("ViT-B-32", tmp_path / "open_clip_model.safetensors") == tmp_path / "open_clip_model.safetensors"


def test_the_paper_pipeline_loads_in_fp32_by_default_and_fp16_on_request(monkeypatch):
    """A&E's run.py L24 loads fp32 weights; ``precision="fp16"`` is the official README's faster option."""
    asked = []

    def fake_paper_pipeline(weights, dtype):
        asked.append(dtype)
        return load_pipeline("tiny", device="cpu").to(dtype)

    monkeypatch.setattr(components, "paper_pipeline", fake_paper_pipeline)
    assert load_pipeline("paper", device="cpu").unet.dtype == torch.float32
    assert load_pipeline("paper", device="cpu", precision="fp16").unet.dtype == torch.float16
    assert asked == [torch.float32, torch.float16]
    assert pipeline_dtype() == torch.float32 and pipeline_dtype("fp16") == torch.float16
    with pytest.raises(ValueError, match="fp32, fp16"):
        load_pipeline("paper", precision="bf16")
