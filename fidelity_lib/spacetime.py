"""Spatial-temporal attention control (Wu, Liu et al., ICCV 2023) on a diffusers Stable Diffusion pipeline (SD 1.x,
2.x, SDXL: ``fidelity_lib.conditioning``; on SDXL the local prompts go through both text encoders).

Follows the official "iccv version" (``docs/official_spatial_temporal.md``): every object of the layout gets a disc
of radius 0.2 at every cross-attention resolution; inside it, the conditional rows' cross-attention output gets
``w[k, step] * (L_k - G_u)`` added, where ``L_k`` is the attention over "a photo of <object>" and ``G_u`` the
unconditional row's output; the weights ``w`` [objects x steps] are optimised with Adam by back-propagating a CLIP
loss (whole image + square crops around the objects) through the sampling trajectory, the VAE decoder and CLIP.

Differences from the original that do not change the image: model weights are frozen, every UNet call and the decoder
run under ``torch.utils.checkpoint`` (memory does not grow with the steps), and the last pass computes no gradient
(the original computes a third Adam update and discards it). ``combination="convex"`` is the paper's convex form.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import Attention
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch.utils.checkpoint import checkpoint

from fidelity_lib.attend_excite import AttendExciteConfig, AttendExciteGuidance, check_image_size, eot_ends
from fidelity_lib.attention import CrossAttentionLayer, attention_hook, attention_processors, cross_attention_layers
from fidelity_lib.clip import ClipModel
from fidelity_lib.conditioning import (
    Conditioning, Pipeline, decode_latents, decodes_in_fp32, default_size, encode_prompts, fp32_vae,
)
from fidelity_lib.layout.predictor import LayoutPredictor, ObjectPlacement
from fidelity_lib.prompts import check_token_indices, subject_token_indices

COMBINATIONS = ("official", "convex")
METHODS = ("st", "st+ae")
PAPER_CLIP_ARCH = "ViT-B-32"  # the loss's CLIP: plms.py L71 clip.load("ViT-B/32"); fidelity_lib.clip.openai_clip loads it


@dataclass(frozen=True)
class SpaceTimeConfig:
    """The official settings; each default names where the official code sets it."""

    num_inference_steps: int = 50  # txt2img-gpt.py L132-136: --ddim_steps 50, --plms (PNDM, skip_prk_steps)
    guidance_scale: float = 7.5  # txt2img-gpt.py L205-210: scale=7.5
    radius: float = 0.2  # attention.py L14 "fix_radius_0p2"; L240-263: disc test d^2 < 0.04 on cell corners
    weight_init: float | None = None  # plms.py L204-214: W = weight_initialize_coef / N; None: 5.0 official,
    # 1.0 convex (so that the weights of all discs covering a pixel sum to at most 1)
    learning_rate: float = 0.005  # plms.py L216-291: Adam([W], lr=0.005)
    passes: int = 3  # plms.py L216-291: range(3); output = image of pass 3 (after two updates)
    global_loss_weight: float = 1.0  # plms.py L273: loss = global + 5 * sum_k local_k
    local_loss_weight: float = 5.0  # plms.py L273
    crop_half_size: float = 0.2  # plms.py L256-271: CLIP crop [x-0.2, x+0.2] x [y-0.2, y+0.2] clipped to the image
    local_prompt: str = "a photo of {}"  # txt2img-gpt.py L305-341: "a photo of " + chunk (article, case kept)
    local_clip_prompt: str = "A photo of {}"  # plms.py L29-36: "A photo of " + chunk lowercased, "the " removed
    clip_normalize: bool = False  # plms.py L29-45: CLIP gets unnormalised [0, 1] pixels
    combination: str = "official"  # attention.py L284-295: G_c + sum M w (L - G_u); "convex": paper's form
    checkpointing: bool = True  # recompute each UNet call and the decoder in backward (plms.py keeps all)
    block_checkpointing: bool = False  # also checkpoint each UNet block inside that recomputation: less memory, one
    # more forward per call (diffusers' enable_gradient_checkpointing)
    autocast: bool = True  # txt2img-gpt.py L240-246: autocast (fp16, backward too); CUDA only
    attend_excite: AttendExciteConfig = field(default_factory=AttendExciteConfig)  # st+ae: the A&E inside the run (the
    # paper's defaults, as for the ae method); st ignores it

    def __post_init__(self):
        if self.combination not in COMBINATIONS:
            raise ValueError(f"combination must be one of {COMBINATIONS}, not {self.combination!r}")

    def initial_weight(self, num_objects: int) -> float:
        """The initial value of every weight: weight_init / N."""
        init = self.weight_init if self.weight_init is not None else (5.0 if self.combination == "official" else 1.0)
        return init / num_objects


@dataclass
class SpaceTimeResult:
    """The image of the last pass, the layout it used, the weights and CLIP loss of every pass, and the time taken."""

    image: PIL.Image.Image
    layout: list[ObjectPlacement]
    weights: list[np.ndarray] = field(default_factory=list)  # per pass: the [objects, steps] weights it sampled with
    losses: list[float] = field(default_factory=list)  # per pass: the CLIP loss of its image
    seconds: float = 0.0
    method: str = "st"
    fallback: bool = False  # True: no object in the layout, the image is plain SD

    def manifest_extras(self) -> dict:
        """What generate.py writes to the manifest beside the common fields."""
        return {
            "layout": [{"name": p.name, "phrase": p.phrase, "x": round(p.x, 6), "y": round(p.y, 6)} for p in self.layout],
            "weights": np.round(self.weights[-1].astype(np.float64), 6).tolist() if self.weights else [],
            "losses": [round(loss, 6) for loss in self.losses],
            "fallback": self.fallback,
        }


class SpaceTimeFallbackWarning(UserWarning):
    """The layout has no object: spatial-temporal control has nothing to do and the image is plain SD."""


def region_masks(
    placements: Sequence[ObjectPlacement], resolution: int | tuple[int, int], radius: float = 0.2
) -> torch.Tensor:
    """[objects, height*width] binary discs: cell (r, c) is inside iff (c/w - x)^2 + (r/h - y)^2 < radius^2."""
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    rows = torch.arange(height, dtype=torch.float64)[:, None] / height  # corners, not centres (attention.py L240-263)
    cols = torch.arange(width, dtype=torch.float64)[None, :] / width
    masks = [((cols - p.x) ** 2 + (rows - p.y) ** 2 < radius**2).flatten() for p in placements]
    if not masks:
        return torch.zeros(0, height * width)
    return torch.stack(masks).float()


def official_combination(
    global_cond: torch.Tensor, global_uncond: torch.Tensor, local: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """G_c + sum_k M_k w_k (L_k - G_u) (attention.py L284-295); G [rows, P, D], L [rows, N, P, D], M [N, P], w [N]."""
    coefficients = masks * weights[:, None]
    return global_cond + torch.einsum("np,rnpd->rpd", coefficients, local - global_uncond[:, None])


def convex_combination(
    global_cond: torch.Tensor, local: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """(1 - sum_k M_k w_k) G_c + sum_k M_k w_k L_k: the paper's form, written G_c + sum_k M_k w_k (L_k - G_c)."""
    coefficients = masks * weights[:, None]
    return global_cond + torch.einsum("np,rnpd->rpd", coefficients, local - global_cond[:, None])


def local_attention(attn: Attention, hidden_states: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
    """to_out(attention) of every row's queries over every context: [rows, contexts, pixels, dim], same weights."""
    rows, pixels, _ = hidden_states.shape
    count, tokens, _ = contexts.shape
    query = attn.to_q(hidden_states)
    key, value = attn.to_k(contexts), attn.to_v(contexts)
    head_dim = query.shape[-1] // attn.heads
    query = query.view(rows, 1, pixels, attn.heads, head_dim).transpose(2, 3).expand(-1, count, -1, -1, -1)
    key = key.view(1, count, tokens, attn.heads, head_dim).transpose(2, 3).expand(rows, -1, -1, -1, -1)
    value = value.view(1, count, tokens, attn.heads, head_dim).transpose(2, 3).expand(rows, -1, -1, -1, -1)
    out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
    out = out.transpose(2, 3).reshape(rows, count, pixels, attn.heads * head_dim)
    return attn.to_out[1](attn.to_out[0](out))


class SpaceTimeControl:
    """What every spatial-temporal processor reads: local embeddings, masks per resolution, this forward's weights."""

    def __init__(self, local_embeds: torch.Tensor, masks: dict[tuple[int, int], torch.Tensor], combination: str):
        self.local_embeds = local_embeds
        self.masks = masks
        self.combination = combination
        self.active = False
        self.weights: torch.Tensor | None = None
        self.conditional: tuple[bool, ...] = ()

    def begin_forward(self, weights: torch.Tensor, conditional: Sequence[bool]) -> None:
        """Switch control on for the next UNet forward with one weight per object and one flag per batch row."""
        self.active = True
        self.weights = weights
        self.conditional = tuple(conditional)


class SpaceTimeProcessor:
    """Runs the layer's processor, then adds each object's local attention inside its region to the conditional rows."""

    def __init__(self, layer: CrossAttentionLayer, control: SpaceTimeControl, inner) -> None:
        self.layer = layer
        self.control = control
        self.inner = inner

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None, *args, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        control = self.control
        if not control.active:
            return out
        if attn.residual_connection or attn.rescale_output_factor != 1.0 or hidden_states.ndim != 3:
            raise ValueError(f"{self.layer.name}: spatial-temporal control needs a plain SD cross-attention layer.")
        conditional = [row for row, flag in enumerate(control.conditional) if flag]
        unconditional = [row for row, flag in enumerate(control.conditional) if not flag]
        rows = torch.tensor(conditional, device=out.device)
        local = local_attention(attn, hidden_states[conditional], control.local_embeds.to(hidden_states.dtype))
        masks = control.masks[self.layer.resolution].to(out.device, out.dtype)
        weights = control.weights.to(out.dtype)
        if control.combination == "official":
            if len(unconditional) != len(conditional):
                raise ValueError("The official combination subtracts the unconditional row: use guidance_scale > 1.")
            edited = official_combination(out[conditional], out[unconditional], local, masks, weights)
        else:
            edited = convex_combination(out[conditional], local, masks, weights)
        return out.index_copy(0, rows, edited)


@contextmanager
def spacetime_control(pipe: Pipeline, control: SpaceTimeControl, latent_size: tuple[int, int]) -> Iterator[SpaceTimeControl]:
    """Wrap every cross-attention layer's current processor in a SpaceTimeProcessor; restore all on exit."""
    current = pipe.unet.attn_processors
    processors = {
        layer.name: SpaceTimeProcessor(layer, control, current[layer.name])
        for layer in cross_attention_layers(pipe.unet, latent_size)
    }
    with attention_processors(pipe.unet, processors):
        yield control


@contextmanager
def frozen(*modules: torch.nn.Module) -> Iterator[None]:
    """Set requires_grad_(False) on every parameter; restore the flags on exit."""
    parameters = [p for module in modules for p in module.parameters()]
    flags = [p.requires_grad for p in parameters]
    for p in parameters:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(parameters, flags):
            p.requires_grad_(flag)


@contextmanager
def block_checkpointing(unet, enabled: bool) -> Iterator[None]:
    """Turn on diffusers' per-block gradient checkpointing while inside (if ``enabled``); restore it on exit."""
    switch = enabled and not unet.is_gradient_checkpointing
    if switch:
        unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if switch:
            unet.disable_gradient_checkpointing()


def clip_global_view(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest upsampling then average pooling to CLIP's size (512 -> x7 -> /16 = 224, DCLIPLoss.forward_2)."""
    factors, kernels = [], []
    for have, want in zip(image.shape[-2:], size):
        common = math.gcd(have, want)
        factors.append(want // common)
        kernels.append(have // common)
    upsampled = F.interpolate(image, scale_factor=tuple(float(f) for f in factors), mode="nearest")
    return F.avg_pool2d(upsampled, kernel_size=tuple(kernels))


def crop_box(placement: ObjectPlacement, half_size: float, height: int, width: int) -> tuple[slice, slice]:
    """Pixel rows and columns of the square [x-h, x+h] x [y-h, y+h] clipped to the image (plms.py L256-271)."""
    x1, x2 = max(placement.x - half_size, 0.0), min(placement.x + half_size, 1.0)
    y1, y2 = max(placement.y - half_size, 0.0), min(placement.y + half_size, 1.0)
    return slice(int(height * y1), int(height * y2)), slice(int(width * x1), int(width * x2))


def local_clip_name(phrase: str) -> str:
    """The object's name in the CLIP local text: lowercased, every "the " removed (plms.py L29-36)."""
    return phrase.lower().replace("the ", "")


class ClipLoss:
    """(1 - cos(image, prompt)) * global weight + local weight * sum_k (1 - cos(crop_k, "A photo of <object>"))."""

    def __init__(self, clip_model: ClipModel, prompt: str, layout: Sequence[ObjectPlacement], config: SpaceTimeConfig, device):
        self.model = clip_model.model.to(device)
        tokenizer = clip_model.tokenizer
        self.size = tuple(self.model.visual.image_size)
        self.layout = list(layout)
        self.config = config
        texts = [prompt] + [config.local_clip_prompt.format(local_clip_name(p.phrase)) for p in self.layout]
        with torch.no_grad():
            self.text_embeds = self.model.encode_text(tokenizer(texts).to(device)).float()
        mean, std = torch.tensor(OPENAI_DATASET_MEAN), torch.tensor(OPENAI_DATASET_STD)
        self.mean, self.std = mean.view(1, 3, 1, 1).to(device), std.view(1, 3, 1, 1).to(device)

    def _similarity(self, views: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        if self.config.clip_normalize:
            views = (views - self.mean) / self.std
        return F.cosine_similarity(self.model.encode_image(views).float(), text_embeds, dim=-1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """The loss of one image [1, 3, H, W] in [0, 1]."""
        height, width = image.shape[-2:]
        loss = self.config.global_loss_weight * (1 - self._similarity(clip_global_view(image, self.size), self.text_embeds[:1])[0])
        if self.layout:
            crops = []
            for placement in self.layout:
                rows, cols = crop_box(placement, self.config.crop_half_size, height, width)
                crops.append(F.interpolate(image[:, :, rows, cols], size=self.size, mode="bilinear", align_corners=False))
            local = 1 - self._similarity(torch.cat(crops), self.text_embeds[1:])
            loss = loss + self.config.local_loss_weight * local.sum()
        return loss


def weight_columns(num_timesteps: int, num_steps: int) -> list[int]:
    """The weight column of each UNet call: PLMS calls the UNet twice on step 0, both with column 0 (plms.py L243)."""
    if num_timesteps == num_steps + 1:
        return [0] + list(range(num_steps))
    return list(range(num_timesteps))


@lru_cache(maxsize=1)
def untrained_layout_predictor() -> LayoutPredictor:
    """A tiny random-weight layout predictor: it finds the objects, but its positions are arbitrary (plumbing only)."""
    return LayoutPredictor.tiny([])


def predict_layout(prompt: str, predictor: LayoutPredictor | None = None, seed: int = 0) -> list[ObjectPlacement]:
    """The predictor's layout (a "sample" predictor draws it with ``seed``); without one, the untrained tiny predictor
    and a warning."""
    if predictor is None:
        warnings.warn("No layout predictor given: using an untrained tiny one (positions are arbitrary).", stacklevel=3)
        predictor = untrained_layout_predictor()
    return predictor.predict(prompt, seed=seed)


class _Guidance:
    """Attend-and-Excite's latent update (AttendExciteGuidance), applied as a constant shift so that W's gradient flows past it."""

    def __init__(
        self, pipe: Pipeline, prompt: str, conditioning: Conditioning, num_timesteps: int, token_indices,
        config: AttendExciteConfig, height: int, width: int,
    ):
        if token_indices is None:
            token_indices = subject_token_indices(pipe.tokenizer, prompt)
        token_indices = check_token_indices(pipe.tokenizer, prompt, token_indices)
        ends = eot_ends(pipe, [prompt], config)
        self.guidance = AttendExciteGuidance(pipe, conditioning, [token_indices], ends, config, num_timesteps, height, width)
        self.layers, self.store = self.guidance.layers, self.guidance.store

    def applies(self, step: int) -> bool:
        return self.guidance.applies(step)

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        """A&E's latent for this step (pipeline_attend_and_excite.py L236-261), as latents + a shift without graph."""
        moved = self.guidance(latents.detach(), t, step).latents
        return latents + (moved - latents.detach())


class _Sampler:
    """One differentiable sampling pass from fixed noise under spatial-temporal control, and the decoder."""

    def __init__(self, pipe, control, cfg_conditioning: Conditioning, initial_latents, config: SpaceTimeConfig, guidance: _Guidance | None):
        self.pipe, self.control, self.cfg_conditioning = pipe, control, cfg_conditioning
        self.initial_latents, self.config, self.guidance = initial_latents, config, guidance
        self.device = initial_latents.device

    def _autocast(self):
        enabled = self.config.autocast and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=enabled)

    def _maybe_checkpoint(self, function, *inputs):
        if self.config.checkpointing and torch.is_grad_enabled():
            return checkpoint(function, *inputs, use_reentrant=False)
        return function(*inputs)

    def _noise(self, latents: torch.Tensor, t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        def forward(latents, weights):
            self.control.begin_forward(weights, (False, True))
            model_input = self.pipe.scheduler.scale_model_input(torch.cat([latents] * 2), t).to(self.pipe.unet.dtype)  # fp32 steps
            with self._autocast():
                noise = self.pipe.unet(model_input, t, **self.cfg_conditioning.unet_kwargs()).sample
            noise_uncond, noise_text = noise.float().chunk(2)
            return noise_uncond + self.config.guidance_scale * (noise_text - noise_uncond)

        return self._maybe_checkpoint(forward, latents, weights)

    def sample(self, weights: torch.Tensor) -> torch.Tensor:
        """The final latent of one pass with weights [objects, steps]."""
        scheduler = self.pipe.scheduler
        scheduler.set_timesteps(self.config.num_inference_steps, device=self.device)
        columns = weight_columns(len(scheduler.timesteps), self.config.num_inference_steps)
        latents = self.initial_latents
        for i, t in enumerate(scheduler.timesteps):
            if self.guidance is not None and self.guidance.applies(i):
                self.control.active = False
                latents = self.guidance(latents, t, i)
            noise = self._noise(latents, t, weights[:, columns[i]])
            latents = scheduler.step(noise, t, latents).prev_sample
        self.control.active = False
        return latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The image [1, 3, H, W] in [0, 1] (clamp((x + 1) / 2), plms.py L249-250); SDXL's VAE in fp32."""

        def forward(latents):
            with nullcontext() if decodes_in_fp32(self.pipe) else self._autocast():
                image = decode_latents(self.pipe, latents)
            return ((image.float() + 1) / 2).clamp(0, 1)

        return self._maybe_checkpoint(forward, latents)


def _to_pil(image: torch.Tensor) -> PIL.Image.Image:
    return StableDiffusionPipeline.numpy_to_pil(image.detach().float().permute(0, 2, 3, 1).cpu().numpy())[0]


def spacetime_generate(
    pipe: Pipeline,
    prompt: str,
    layout: Sequence[ObjectPlacement] | None = None,
    *,
    seed: int = 0,
    config: SpaceTimeConfig = SpaceTimeConfig(),
    clip_model: ClipModel,
    method: str = "st",
    predictor: LayoutPredictor | None = None,
    token_indices: Sequence[int] | None = None,
    image_size: int | None = None,
) -> SpaceTimeResult:
    """One image with spatial-temporal control (``method="st+ae"``: plus Attend-and-Excite guidance in the same run).

    ``layout`` None asks ``predictor`` (see predict_layout; a "sample" predictor draws with ``seed``); ``clip_model`` is
    the loss's CLIP (the paper's ViT-B/32: ``components.load_loss_clip``). ``token_indices`` are A&E's subjects (st+ae;
    None: the prompt's nouns) and ``config.attend_excite`` its settings, the same AttendExciteConfig the ``ae`` method
    takes. An empty layout gives plain SD with ``fallback=True`` and a SpaceTimeFallbackWarning. ``image_size`` is the
    square image side (None: the model's default size).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    start = time.perf_counter()
    layout = list(layout) if layout is not None else predict_layout(prompt, predictor, seed)
    height, width = (image_size, image_size) if image_size else default_size(pipe)
    check_image_size(height, width)
    if not layout:
        warnings.warn(f"No object in the layout of {prompt!r}: plain Stable Diffusion.", SpaceTimeFallbackWarning, stacklevel=2)
        image = pipe(
            prompt,
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(seed),
            height=height,
            width=width,
        ).images[0]
        return SpaceTimeResult(image, [], seconds=time.perf_counter() - start, method=method, fallback=True)

    device = pipe._execution_device
    latent = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    conditioning, unconditional = encode_prompts(pipe, [prompt], device, True, height, width)
    local_texts = [config.local_prompt.format(placement.phrase) for placement in layout]
    local_embeds = encode_prompts(pipe, local_texts, device, False, height, width)[0].embeds  # SDXL: both encoders
    generator = torch.Generator("cpu").manual_seed(seed)
    initial_latents = pipe.prepare_latents(1, pipe.unet.config.in_channels, height, width, conditioning.embeds.dtype, device, generator)
    resolutions = {layer.resolution for layer in cross_attention_layers(pipe.unet, latent)}
    masks = {resolution: region_masks(layout, resolution, config.radius).to(device) for resolution in resolutions}
    control = SpaceTimeControl(local_embeds, masks, config.combination)
    weights = torch.full(
        (len(layout), config.num_inference_steps), config.initial_weight(len(layout)), device=device, requires_grad=True
    )
    optimizer = torch.optim.Adam([weights], lr=config.learning_rate)

    pipe.scheduler.set_timesteps(config.num_inference_steps, device=device)
    guidance = None
    if method == "st+ae":
        guidance = _Guidance(
            pipe, prompt, conditioning, len(pipe.scheduler.timesteps), token_indices, config.attend_excite, height, width
        )
    hook = attention_hook(pipe.unet, guidance.layers, guidance.store) if guidance is not None else nullcontext()
    blocks = block_checkpointing(pipe.unet, config.block_checkpointing)
    encoders = [module for module in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if module is not None]
    with frozen(pipe.unet, pipe.vae, *encoders, clip_model.model), hook, blocks, fp32_vae(pipe):  # SDXL: fp32 VAE throughout
        loss_of = ClipLoss(clip_model, prompt, layout, config, device)
        sampler = _Sampler(pipe, control, unconditional.cat(conditioning), initial_latents, config, guidance)
        history, losses = [], []
        with spacetime_control(pipe, control, latent):
            for number in range(config.passes):
                last = number == config.passes - 1
                with torch.set_grad_enabled(not last):
                    image = sampler.decode(sampler.sample(weights))
                    loss = loss_of(image)
                history.append(weights.detach().cpu().numpy().copy())
                losses.append(loss.item())
                if not last:
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
    return SpaceTimeResult(_to_pil(image), layout, history, losses, time.perf_counter() - start, method)
