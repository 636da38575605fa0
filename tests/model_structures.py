"""Random-weight pipelines with the block layout of SD 2.x and SDXL, tiny channels (diffusers' tiny test configs as a guide).

- SD 2.x: SD 1.x's UNet layout with linear projections and per-level head sizes, an OpenCLIP-style text encoder whose
  tokenizer pads with "!", PNDM (2.1-base, epsilon) or DDIM with v-prediction (2.1, 768-v).
- SDXL base: a 3-level UNet (no attention at the top level, then 2 and 10 transformer layers, here 1 and 2),
  two text encoders whose states are concatenated (the cross-attention width is the sum), the second with a
  projection, the "text_time" added embedding (pooled text + 6 size ids), a 4-level VAE, Euler.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from fidelity_lib.models import CLIP_VOCAB_SIZE, clip_tokenizer, pndm_scheduler

SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, num_train_timesteps=1000)


def bang_padded_tokenizer():
    """SD 2.x's tokenizer (and SDXL's second): the same BPE, padded with "!" (id 0) instead of <|endoftext|>."""
    tokenizer = clip_tokenizer()
    tokenizer.pad_token = "!"
    return tokenizer


def text_config(hidden: int, projection: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                          pad_token_id=49407, projection_dim=projection)


def vae(levels: int, sample_size: int, channels: int = 16, **extra) -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(channels,) * levels, down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels, latent_channels=4, norm_num_groups=8,
                         sample_size=sample_size, **extra)


def sd2_pipeline(sample_size: int = 64, v_prediction: bool = False, levels: int = 4) -> StableDiffusionPipeline:
    """SD 2.x's layout: cross-attention at every level but the deepest, linear projections, "!" padding."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=sample_size, block_out_channels=(32,) * levels, layers_per_block=1, cross_attention_dim=32,
        attention_head_dim=(2,) + (4,) * (levels - 1), use_linear_projection=True, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
    )
    if v_prediction:
        scheduler = DDIMScheduler(**SCHEDULER, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False)
    else:
        scheduler = pndm_scheduler()
    return StableDiffusionPipeline(
        vae=vae(levels, sample_size * 8), text_encoder=CLIPTextModel(text_config(32)), tokenizer=bang_padded_tokenizer(),
        unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def sdxl_pipeline(sample_size: int = 32, vae_levels: int = 4) -> StableDiffusionXLPipeline:
    """SDXL base's layout: DownBlock2D then two cross-attention levels (1 and 2 transformer layers), two encoders."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=sample_size, block_out_channels=(32, 32, 64), layers_per_block=1, transformer_layers_per_block=(1, 1, 2),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 8), use_linear_projection=True, cross_attention_dim=64, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 32,
    )
    return StableDiffusionXLPipeline(
        vae=vae(vae_levels, sample_size * 2 ** (vae_levels - 1), scaling_factor=0.13025, force_upcast=True),
        text_encoder=CLIPTextModel(text_config(32)), text_encoder_2=CLIPTextModelWithProjection(text_config(32, projection=32)),
        tokenizer=clip_tokenizer(), tokenizer_2=bang_padded_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(**SCHEDULER, timestep_spacing="leading"), add_watermarker=False,
    )


def save_folder(pipe, folder: Path, listed_but_absent: dict[str, list] | None = None) -> Path:
    """save_pretrained, then list components in model_index.json that are not saved (as the real repos do)."""
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(listed_but_absent or {})
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder
