"""Which Stable Diffusion a pipeline is, and what its UNet reads besides the latent.

SD 1.x and 2.x condition on one text encoder's per-token states. SDXL concatenates the per-token states of two
encoders (CLIP ViT-L, 768 features, and OpenCLIP bigG, 1280, over the same 77 BPE positions) and adds the second
encoder's pooled embedding and the micro-conditioning (original size, crop top-left, target size; diffusers
``pipeline_stable_diffusion_xl.py`` ``_get_add_time_ids``). The methods build one ``Conditioning`` per batch and call
the UNet with ``**conditioning.unet_kwargs()``, so the same loop runs every family. ``docs/models.md`` explains the
choices per family.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from fidelity_lib.prompts import uses_sd2_tokenizer

Pipeline = StableDiffusionPipeline | StableDiffusionXLPipeline


@dataclass(frozen=True)
class ModelFamily:
    """A Stable Diffusion family: its reference weights and the settings the methods take from it."""

    name: str
    label: str
    repo_id: str  # the Hugging Face repo of its reference weights
    normalize_eot: bool  # A&E's softmax stops before <eot> when a tokenizer pads with "!" (run.py's sd_2_1 switch)


FAMILIES = {
    family.name: family
    for family in (
        ModelFamily("sd1", "Stable Diffusion 1.x", "CompVis/stable-diffusion-v1-4", False),
        ModelFamily("sd2", "Stable Diffusion 2.x base (512, epsilon)", "stabilityai/stable-diffusion-2-1-base", True),
        ModelFamily("sd2-v", "Stable Diffusion 2.x 768-v (v-prediction)", "stabilityai/stable-diffusion-2-1", True),
        ModelFamily("sdxl", "SDXL base 1.0", "stabilityai/stable-diffusion-xl-base-1.0", True),
    )
}


def model_family(pipe: Pipeline) -> ModelFamily:
    """SDXL by its pipeline class; SD 2.x by its "!"-padding tokenizer, 768-v by its v-prediction; otherwise SD 1.x."""
    if isinstance(pipe, StableDiffusionXLPipeline):
        return FAMILIES["sdxl"]
    if uses_sd2_tokenizer(pipe.tokenizer):
        v_prediction = pipe.scheduler.config.get("prediction_type") == "v_prediction"
        return FAMILIES["sd2-v" if v_prediction else "sd2"]
    return FAMILIES["sd1"]


def latent_size(pipe: Pipeline) -> tuple[int, int]:
    """The UNet's default latent (height, width): its sample_size (64 SD 1.x, 96 768-v, 128 SDXL)."""
    side = pipe.unet.config.sample_size
    return (side, side) if isinstance(side, int) else tuple(side)


def default_size(pipe: Pipeline) -> tuple[int, int]:
    """The image size the UNet was built for: latent size x the VAE factor (512 SD 1.x, 768 768-v, 1024 SDXL)."""
    height, width = latent_size(pipe)
    return height * pipe.vae_scale_factor, width * pipe.vae_scale_factor


def ae_attention_res(pipe: Pipeline) -> int:
    """A&E's map side at the default size: 16 on SD 1.x (config.py RunConfig.attention_res), else a quarter of the
    latent side, the same fraction (16 on 2.x-base, 24 on 768-v, 32 on SDXL; docs/models.md)."""
    return 16 if model_family(pipe).name == "sd1" else min(latent_size(pipe)) // 4


def check_shared_positions(pipe: Pipeline, prompt: str) -> None:
    """SDXL: raise ValueError unless both tokenizers put the prompt's tokens at the same positions (subject indices
    count the first tokenizer's tokens and address both encoders' states)."""
    if isinstance(pipe, StableDiffusionXLPipeline):
        first, second = pipe.tokenizer(prompt).input_ids, pipe.tokenizer_2(prompt).input_ids
        if first != second:
            raise ValueError(f"SDXL's two tokenizers split {prompt!r} differently ({len(first)} and {len(second)} tokens): "
                             "token indices would address different words in the two encoders. Check tokenizer_2/.")


@dataclass(frozen=True)
class Conditioning:
    """What the UNet reads for a batch: per-token text states, and SDXL's pooled text and size ids."""

    embeds: torch.Tensor  # [batch, 77, features]
    pooled: torch.Tensor | None = None  # SDXL: [batch, projection_dim]
    time_ids: torch.Tensor | None = None  # SDXL: [batch, 6]

    def rows(self, rows: list[int] | slice) -> Conditioning:
        """The conditioning of some batch rows (a list of indices or a slice)."""
        return Conditioning(self.embeds[rows], *(None if t is None else t[rows] for t in (self.pooled, self.time_ids)))

    def cat(self, other: Conditioning) -> Conditioning:
        """This batch, then ``other``'s rows (the CFG batch: unconditional first)."""
        pairs = ((self.pooled, other.pooled), (self.time_ids, other.time_ids))
        return Conditioning(torch.cat([self.embeds, other.embeds]), *(None if a is None else torch.cat([a, b]) for a, b in pairs))

    def unet_kwargs(self) -> dict:
        """Keyword arguments of ``UNet2DConditionModel.forward`` beyond the latent and the timestep."""
        if self.pooled is None:
            return {"encoder_hidden_states": self.embeds}
        return {"encoder_hidden_states": self.embeds, "added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": self.time_ids}}


def micro_conditioning(
    pipe: StableDiffusionXLPipeline, height: int, width: int, pooled: torch.Tensor
) -> torch.Tensor:
    """SDXL's size ids, one row per pooled embedding: original size = target size = the image, crop at (0, 0) (the
    pipeline's defaults)."""
    time_ids = [height, width, 0, 0, height, width]
    passed = pipe.unet.config.addition_time_embed_dim * len(time_ids) + pooled.shape[-1]
    expected = pipe.unet.add_embedding.linear_1.in_features
    if passed != expected:
        raise ValueError(
            f"This SDXL UNet expects {expected} added-embedding features but its config gives {passed} "
            "(addition_time_embed_dim x 6 + text_encoder_2 projection_dim): the folder's unet/ and text_encoder_2/ do not match."
        )
    return torch.tensor([time_ids] * len(pooled), dtype=pooled.dtype, device=pooled.device)


@torch.no_grad()
def encode_prompts(
    pipe: Pipeline, prompts: list[str], device: torch.device | str, do_cfg: bool, height: int, width: int
) -> tuple[Conditioning, Conditioning | None]:
    """The prompts' conditioning and, with CFG, the empty prompt's (SDXL: zeros, its force_zeros_for_empty_prompt)."""
    if isinstance(pipe, StableDiffusionXLPipeline):
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=do_cfg
        )
        time_ids = micro_conditioning(pipe, height, width, pooled)
        unconditional = Conditioning(negative, negative_pooled, time_ids) if do_cfg else None
        return Conditioning(embeds, pooled, time_ids), unconditional
    embeds, negative = pipe.encode_prompt(prompts, device, 1, do_cfg)
    return Conditioning(embeds), Conditioning(negative) if do_cfg else None


def decodes_in_fp32(pipe: Pipeline) -> bool:
    """SDXL's VAE overflows in fp16 (its config's force_upcast): it decodes in fp32, as the SDXL pipeline does."""
    return model_family(pipe).name == "sdxl" and bool(getattr(pipe.vae.config, "force_upcast", False))


@contextmanager
def fp32_vae(pipe: Pipeline) -> Iterator[None]:
    """While inside, the VAE is in fp32 where it must decode so (decodes_in_fp32); its dtype is restored on exit.

    Hold it around everything that differentiates through the decoder: a dtype switch inside a checkpointed or
    differentiated decode would meet other weights in backward.
    """
    dtype = pipe.vae.dtype
    switch = decodes_in_fp32(pipe) and dtype != torch.float32
    if switch:
        pipe.vae.to(torch.float32)
    try:
        yield
    finally:
        if switch:
            pipe.vae.to(dtype)


def decode_latents(pipe: Pipeline, latents: torch.Tensor) -> torch.Tensor:
    """The VAE's images in [-1, 1] for latents [batch, 4, h, w], unscaled as the pipelines do (the VAE config's
    scaling factor, and its latents_mean / latents_std where it has them); SDXL's VAE in fp32."""
    vae = pipe.vae
    with fp32_vae(pipe):
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, len(mean), 1, 1)
            mean, std = (torch.tensor(v, device=latents.device).view(shape) for v in (mean, std))
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        return vae.decode(latents.to(vae.dtype), return_dict=False)[0]
