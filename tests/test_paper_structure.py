"""The paper path at the real structures of SD v1.4, SD 2.1-base and SDXL base, with random tiny-channel weights.

A folder laid out as ``CompVis/stable-diffusion-v1-4`` (4-level UNet on a 64x64 latent, 4-level VAE, a 77-token CLIP
text encoder, tokenizer files, a PNDM scheduler config), once with and once without the optional components, loads
through ``load_pipeline("paper", weights=folder)``. It, an SD 2.1-base folder (512) and an SDXL base folder (1024,
two text encoders, Euler scheduler) each make an image at their default size with sd, ae, st and st+ae. ST's CLIP
ViT-B/32 is a random-weight file in a temporary Hugging Face cache, found the way the real one is.
"""

import json
import shutil

import huggingface_hub
import numpy as np
import open_clip
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

from fidelity_lib.attend_excite import AttendExciteConfig, attend_and_excite
from fidelity_lib.clip import OPENAI_FILES, OPENAI_HF_REPOS
from fidelity_lib.components import load_loss_clip, load_pipeline
from fidelity_lib.conditioning import default_size, model_family
from fidelity_lib.layout.predictor import ObjectPlacement
from fidelity_lib.models import CLIP_VOCAB_SIZE, clip_tokenizer, pndm_scheduler
from fidelity_lib.spacetime import PAPER_CLIP_ARCH, SpaceTimeConfig, spacetime_generate

from model_structures import save_folder, sd2_pipeline, sdxl_pipeline

pytestmark = pytest.mark.slow
PROMPT = "a cat to the left of a dog"


def sd14_structure_pipeline() -> StableDiffusionPipeline:
    """SD v1.4's block layout (3 cross-attention levels + 1 plain, 64x64 latent, x8 VAE) with 32 channels everywhere."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, block_out_channels=(32, 32, 32, 32), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, sample_size=512,
    )
    text = CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=CLIPTextModel(text), tokenizer=clip_tokenizer(), unet=unet, scheduler=pndm_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


@pytest.fixture(scope="module")
def sd14_folders(tmp_path_factory):
    """The same weights twice: with the optional feature_extractor/ saved, and with only the components the book loads."""
    pipe = sd14_structure_pipeline()
    folders = {}
    for variant in ("with_optional", "only_needed"):
        folder = tmp_path_factory.mktemp(variant)
        pipe.register_modules(feature_extractor=CLIPImageProcessor() if variant == "with_optional" else None)
        pipe.save_pretrained(folder)
        index = json.loads((folder / "model_index.json").read_text())
        index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]  # listed as in v1.4, never saved
        if variant == "only_needed":
            index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
        (folder / "model_index.json").write_text(json.dumps(index))
        folders[variant] = folder
    assert (folders["with_optional"] / "feature_extractor").is_dir() and not (folders["only_needed"] / "feature_extractor").exists()
    return folders


@pytest.fixture(scope="module")
def random_clip_cache(tmp_path_factory):
    """A random ViT-B/32 open_clip file where the Hugging Face cache keeps the OpenAI one.

    Saved once per module in fp16 (open_clip loads it into fp32 parameters) and deleted afterwards: the fp32 file is
    600 MB, and two of them filled a CI runner's disk.
    """
    hub = tmp_path_factory.mktemp("hf") / "hub"
    repo = OPENAI_HF_REPOS[PAPER_CLIP_ARCH]
    snapshot = hub / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(0)
    model = open_clip.create_model(PAPER_CLIP_ARCH, pretrained=None, force_quick_gelu=True)
    checkpoint = snapshot / OPENAI_FILES[0]
    save_file({key: value.half().contiguous() for key, value in model.state_dict().items()}, checkpoint)
    del model
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))  # read at import: patch it
        yield checkpoint
    shutil.rmtree(hub.parent)


@pytest.fixture(scope="module")
def family_folders(sd14_folders, tmp_path_factory):
    """SD v1.4 (with its optional parts), SD 2.1-base and SDXL base structures, each saved as its repo is laid out."""
    absent = {"image_encoder": [None, None], "feature_extractor": ["transformers", "CLIPImageProcessor"]}
    return {
        "sd14": (sd14_folders["with_optional"], 512),
        "sd21-base": (save_folder(sd2_pipeline(sample_size=64, levels=4), tmp_path_factory.mktemp("sd21")), 512),
        "sdxl": (save_folder(sdxl_pipeline(sample_size=128, vae_levels=4), tmp_path_factory.mktemp("sdxl"), absent), 1024),
    }


@pytest.mark.parametrize("variant", ["with_optional", "only_needed"])
def test_an_sd14_structure_folder_loads_with_or_without_its_optional_parts(variant, sd14_folders):
    pipe = load_pipeline("paper", weights=sd14_folders[variant], device="cpu")
    assert pipe.profile == "paper" and pipe.weights_id == f"{sd14_folders[variant]} [Stable Diffusion 1.x]" and pipe.vae_scale_factor == 8
    assert (pipe.feature_extractor is None) and pipe.safety_checker is None  # optional parts are never loaded
    generator = torch.Generator("cpu").manual_seed(0)
    sd = pipe(PROMPT, num_inference_steps=2, generator=generator, output_type="np").images[0]
    assert sd.shape == (512, 512, 3)


@pytest.mark.parametrize("family", ["sd14", "sd21-base", "sdxl"])
def test_each_model_structure_makes_its_default_size_with_sd_ae_st_and_st_plus_ae(family, family_folders, random_clip_cache):
    folder, size = family_folders[family]
    pipe = load_pipeline("paper", weights=folder, device="cpu")
    assert default_size(pipe) == (size, size) and model_family(pipe).name == {"sd14": "sd1", "sd21-base": "sd2", "sdxl": "sdxl"}[family]
    sd = pipe(PROMPT, num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(0), output_type="np").images[0]
    assert sd.shape == (size, size, 3)
    ae_config = AttendExciteConfig(max_iter_to_alter=2, thresholds={})  # the model's own attention resolution
    ae = attend_and_excite(pipe, PROMPT, (2, 7), seed=0, config=ae_config, num_inference_steps=2)
    assert ae.image.size == (size, size) and len(ae.losses) == 2 and np.isfinite(ae.losses).all()
    clip = load_loss_clip("paper")
    assert str(random_clip_cache) in clip.name
    layout = [ObjectPlacement("cat", "a cat", 0.3, 0.5), ObjectPlacement("dog", "a dog", 0.7, 0.5)]
    for method in ("st", "st+ae"):
        config = SpaceTimeConfig(num_inference_steps=2, passes=2, attend_excite=ae_config)
        st = spacetime_generate(pipe, PROMPT, layout, seed=0, config=config, clip_model=clip, method=method)
        assert st.image.size == (size, size) and len(st.losses) == 2 and np.isfinite(st.losses).all()
        assert not np.allclose(st.weights[1], st.weights[0])  # the CLIP loss reached the weights through the decoder
