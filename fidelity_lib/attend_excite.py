"""Attend-and-Excite (Chefer et al., SIGGRAPH 2023) on a diffusers Stable Diffusion pipeline (SD 1.x, 2.x, SDXL).

The loop follows the official code (``yuval-alaluf/Attend-and-Excite``, ``docs/official_attend_and_excite.md``) step by
step, with two savings that do not change the image: no grad-enabled forward once no step can change the latent,
and no unused forwards in the iterative refinement (each latent goes through the UNet once). The A&E forward also
stops right after the last cross-attention layer it reads, since nothing after it reaches the loss. SD 2.x and SDXL
run the same loop (``fidelity_lib.conditioning``): subject indices count the first tokenizer's BPE tokens, which
SDXL's two encoders share position by position; ``docs/models.md`` gives the per-model settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import time
from dataclasses import dataclass, field, replace

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from fidelity_lib.conditioning import (
    Conditioning, Pipeline, ae_attention_res, check_shared_positions, decode_latents, default_size, encode_prompts, latent_size,
    model_family,
)
from fidelity_lib.prompts import (
    check_prompt,
    check_prompt_length,
    check_token_indices,
    eot_index,
    prompt_tokens,
    subject_token_indices,
)
from fidelity_lib.attention import (
    AttentionStore,
    ForwardComplete,
    CrossAttentionLayer,
    attention_hook,
    cross_attention_layers,
    layers_at_resolution,
    mean_attention,
)


@dataclass(frozen=True)
class AttendExciteConfig:
    """The paper's settings; each default names where the official code sets it."""

    max_iter_to_alter: int = 25  # config.py RunConfig.max_iter_to_alter: update the latent while step index i < 25
    thresholds: dict[int, float] = field(
        default_factory=lambda: {0: 0.05, 10: 0.5, 20: 0.8}
    )  # config.py RunConfig.thresholds: refinement checkpoints, step index -> required min of max attention
    scale_factor: float = 20.0  # config.py RunConfig.scale_factor: base step size alpha
    scale_range: tuple[float, float] = (1.0, 0.5)  # config.py RunConfig.scale_range: alpha_i = 20 sqrt(linspace(1, .5))
    smooth_attentions: bool = True  # config.py RunConfig.smooth_attentions
    kernel_size: int = 3  # config.py RunConfig.kernel_size
    sigma: float = 0.5  # config.py RunConfig.sigma (utils/gaussian_smoothing.py's formula: effective sigma sqrt(2)*0.5)
    attention_res: int | tuple[int, int] | None = None  # config.py RunConfig.attention_res = 16 on SD 1.x; int = side
    # at the UNet's default size (scaled with the image size, same UNet depth); (h, w) = exact grid at the requested
    # size; None = the model's: 16 on SD 1.x and 2.x-base, 24 on 768-v, 32 on SDXL (conditioning.ae_attention_res)
    max_refinement_steps: int = 20  # pipeline_attend_and_excite.py L277 (default argument of the refinement)
    normalize_eot: bool | None = None  # run.py / pipeline L527 `sd_2_1` (False); None = the model's
    # (ModelFamily.normalize_eot): True for SD 2.x and SDXL, whose (second) tokenizer pads with "!"

    def step_sizes(self, num_timesteps: int) -> np.ndarray:
        """alpha_i = scale_factor * sqrt(linspace(scale_range, num_timesteps)) (pipeline_attend_and_excite.py L500)."""
        return self.scale_factor * np.sqrt(np.linspace(self.scale_range[0], self.scale_range[1], num_timesteps))


@dataclass
class AttendExciteResult:
    """One image, what A&E saw per guided step, and how long it took."""

    image: PIL.Image.Image
    pixels: np.ndarray  # float32 [height, width, 3] in [0, 1], before 8-bit quantisation
    token_indices: tuple[int, ...]
    tokens: tuple[str, ...]
    guided_steps: list[int]  # the step indices that ran the A&E forward
    losses: list[float]  # loss at each guided step's first forward (before refinement and update)
    max_attention: list[list[float]]  # per guided step, per subject token
    refinement_iterations: dict[int, int]  # threshold step -> refinement iterations run there
    seconds: float

    def manifest_extras(self) -> dict:
        """What generate.py writes to the manifest beside the common fields."""
        return {
            "token_indices": list(self.token_indices),
            "tokens": list(self.tokens),
            "losses": [round(loss, 6) for loss in self.losses],
            "max_attention": [[round(value, 6) for value in values] for values in self.max_attention],
            "refinement_iterations": {str(step): count for step, count in self.refinement_iterations.items()},
        }


class ImageSizeError(ValueError):
    """An image height or width that is not a positive multiple of 8."""


def check_image_size(height: int, width: int) -> None:
    """Raise ImageSizeError unless height and width are positive multiples of 8 (the VAE's downsampling)."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % 8:
            raise ImageSizeError(f"{name}={value!r} must be a positive multiple of 8 (e.g. 512 for SD v1.4, 64 for the tiny model).")


def gaussian_kernel(kernel_size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """The official 2-D smoothing kernel: exp(-((x - mu) / (2 sigma))^2) per axis, normalised to sum 1."""
    x = torch.arange(kernel_size, dtype=torch.float32)
    factor = torch.exp(-(((x - (kernel_size - 1) / 2) / (2 * sigma)) ** 2))
    kernel = torch.outer(factor, factor)
    return kernel / kernel.sum()


def subject_max_attention(
    attention: torch.Tensor,
    token_indices: tuple[int, ...],
    end: int | None = None,
    kernel: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per subject: the max over pixels of its smoothed map after a x100 softmax over the text tokens.

    ``attention`` is [height, width, 77]. The text tokens are positions 1..75 (SD 1.x: <eot> and padding included),
    or 1..end-1 when ``end`` (the <eot> position, SD 2.x normalisation) is given.
    """
    text = attention[:, :, 1 : end if end is not None else -1]
    text = torch.softmax(text * 100, dim=-1)
    maxima = []
    for index in token_indices:
        image = text[:, :, index - 1]
        if kernel is not None:
            pad = kernel.shape[-1] // 2  # the official code hard-codes 1, the same for its 3x3 kernel
            image = F.pad(image[None, None], (pad, pad, pad, pad), mode="reflect")
            image = F.conv2d(image, kernel[None, None].to(image))[0, 0]
        maxima.append(image.max())
    return torch.stack(maxima)


def attend_excite_loss(max_attention: torch.Tensor) -> torch.Tensor:
    """max over subjects of max(0, 1 - max attention): only the weakest subject drives the gradient."""
    return torch.clamp(1.0 - max_attention, min=0.0).max()


def attention_layers(pipe: Pipeline, height: int, width: int, attention_res) -> list[CrossAttentionLayer]:
    """The cross-attention layers A&E reads for an image size (see AttendExciteConfig.attention_res)."""
    if attention_res is None:
        attention_res = ae_attention_res(pipe)
    scale = pipe.vae_scale_factor
    layers = cross_attention_layers(pipe.unet, (height // scale, width // scale))
    if not isinstance(attention_res, int):
        return layers_at_resolution(layers, tuple(attention_res))
    default = latent_size(pipe)
    try:
        names = {layer.name for layer in layers_at_resolution(cross_attention_layers(pipe.unet, default), (attention_res,) * 2)}
    except ValueError as error:
        raise ValueError(f"attention_res={attention_res} at the UNet's default latent size {default}: {error}") from None
    return [layer for layer in layers if layer.name in names]


@dataclass
class _Evaluation:
    """One A&E forward over some batch rows: the leaf latents, each row's subject maxima and loss."""

    rows: list[int]  # which images of the batch the leaf's rows are
    latents: torch.Tensor
    max_attention: list[torch.Tensor]
    losses: torch.Tensor
    _gradient: torch.Tensor | None = None

    def gradient(self) -> torch.Tensor:
        """dL_b/dz_b for every row at once (the rows are independent, so the gradient of the sum is per image)."""
        if self._gradient is None:
            (self._gradient,) = torch.autograd.grad(self.losses.sum(), self.latents)
        return self._gradient


@dataclass
class GuidedStep:
    """What one guided step did to each image of the batch."""

    latents: torch.Tensor  # the latents the step's CFG forward runs on
    losses: list[float]  # per image, at the step's first forward
    max_attention: list[list[float]]  # per image, per subject token, at the first forward
    refinement_iterations: list[int | None]  # per image: iterations run (None: no refinement at this step)


class AttendExciteGuidance:
    """Attend-and-Excite's latent update for a batch of images, one UNet call per forward for the whole batch.

    Losses, step decisions, thresholds and refinement counts stay per image, so each image gets what a batch of
    one would give (within float tolerance). Install ``store`` on ``layers`` (``attention_hook``) around the loop.
    """

    def __init__(
        self,
        pipe: Pipeline,
        conditioning: Conditioning,
        token_indices: list[tuple[int, ...]],
        ends: list[int | None],
        config: AttendExciteConfig,
        num_timesteps: int,
        height: int,
        width: int,
    ) -> None:
        if not len(conditioning.embeds) == len(token_indices) == len(ends):
            raise ValueError(f"{len(conditioning.embeds)} embeddings, {len(token_indices)} index tuples and {len(ends)} ends.")
        self.pipe, self.config = pipe, config
        self.conditioning, self.token_indices, self.ends = conditioning, token_indices, ends
        self.layers = attention_layers(pipe, height, width, config.attention_res)
        self.store = AttentionStore(keep_graph=True, stop_after=[layer.name for layer in self.layers])
        self.store.active = False
        device = conditioning.embeds.device
        self.kernel = gaussian_kernel(config.kernel_size, config.sigma).to(device) if config.smooth_attentions else None
        self.step_sizes = config.step_sizes(num_timesteps)

    def applies(self, step: int) -> bool:
        return step < self.config.max_iter_to_alter or step in self.config.thresholds

    def evaluate(self, latents: torch.Tensor, t: torch.Tensor, step: int, rows: list[int]) -> _Evaluation:
        """The A&E forward (conditional embeddings only) of the given batch rows, stopped after the last layer read."""
        latents = latents.clone().detach().requires_grad_(True)
        self.store.begin_forward(step)
        self.store.active = True
        try:
            model_input = self.pipe.scheduler.scale_model_input(latents, t)  # PNDM: the identity (the official loop
            # feeds unscaled latents); a sigma-scaled scheduler such as Euler needs it
            self.pipe.unet(model_input, t, **self.conditioning.rows(rows).unet_kwargs())
        except ForwardComplete:  # the rest of the UNet does not reach the loss
            pass
        finally:
            self.store.active = False
        maxima = [
            subject_max_attention(mean_attention(self.store.maps, k), self.token_indices[row], self.ends[row], self.kernel)
            for k, row in enumerate(rows)
        ]
        return _Evaluation(rows, latents, maxima, torch.stack([attend_excite_loss(m) for m in maxima]))

    @staticmethod
    def moved(evaluation: _Evaluation, step_size: float, which: torch.Tensor) -> torch.Tensor:
        """z <- z - alpha_i * dL/dz with the raw gradient on the ``which`` rows (pipeline_attend_and_excite.py L256-261)."""
        latents = evaluation.latents.detach()
        if not which.any():
            return latents
        return torch.where(which.view(-1, 1, 1, 1), latents - step_size * evaluation.gradient(), latents)

    def refine(self, first: _Evaluation, t, step: int, threshold: float, step_size: float):
        """Iterative refinement (L263-343) of the rows above the target, each until its own stop.

        As in the official loop, an image's stopping test reads its loss before its latest update, and its result
        is the evaluation of its final latent. Returns the final evaluation of each row and its iteration count.
        """
        target = max(0.0, 1.0 - threshold)
        final = {row: (first, k) for k, row in enumerate(first.rows)}  # row -> (evaluation, its position there)
        iterations = {row: 0 for row in first.rows}
        tested = dict(zip(first.rows, first.losses.detach().tolist()))
        active = [row for row in first.rows if tested[row] > target]
        current = first
        while active:
            positions = [current.rows.index(row) for row in active]
            current_losses = current.losses.detach().tolist()
            for row, k in zip(active, positions):
                iterations[row] += 1
                tested[row] = current_losses[k]
            which = torch.tensor([row in active and current_losses[k] != 0 for k, row in enumerate(current.rows)])
            latents = self.moved(current, step_size, which.to(current.latents.device))[positions]
            current = self.evaluate(latents, t, step, active)
            for k, row in enumerate(active):
                final[row] = (current, k)
            active = [row for row in active if tested[row] > target and iterations[row] < self.config.max_refinement_steps]
        return final, iterations

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, step: int) -> GuidedStep:
        """A&E at one step for every image: evaluate, refine at a threshold step, then the gradient step."""
        config = self.config
        rows = list(range(len(latents)))
        with torch.enable_grad():
            first = self.evaluate(latents, t, step, rows)
            final = {row: (first, row) for row in rows}
            iterations: dict[int, int] = {}
            if step in config.thresholds and (first.losses > 1.0 - config.thresholds[step]).any():
                final, iterations = self.refine(first, t, step, config.thresholds[step], self.step_sizes[step])
                iterations = {row: count for row, count in iterations.items() if count > 0}
            moved = []
            alter = step < config.max_iter_to_alter
            for evaluation in {id(e): e for e, _ in final.values()}.values():
                values = evaluation.losses.detach().tolist()
                which = torch.tensor([alter and final[row][0] is evaluation and values[k] != 0 for k, row in enumerate(evaluation.rows)])
                moved.append((evaluation, self.moved(evaluation, self.step_sizes[step], which.to(latents.device))))
            result = latents.detach().clone()
            for evaluation, new in moved:
                for k, row in enumerate(evaluation.rows):
                    if final[row][0] is evaluation:
                        result[row] = new[k]
        return GuidedStep(
            latents=result,
            losses=first.losses.detach().tolist(),
            max_attention=[m.detach().tolist() for m in first.max_attention],
            refinement_iterations=[iterations.get(row) for row in rows],
        )


def model_config(pipe: Pipeline, config: AttendExciteConfig) -> AttendExciteConfig:
    """``config`` with the model's attention_res and normalize_eot where it leaves them None: what a run records."""
    return replace(
        config,
        attention_res=ae_attention_res(pipe) if config.attention_res is None else config.attention_res,
        normalize_eot=model_family(pipe).normalize_eot if config.normalize_eot is None else config.normalize_eot,
    )


def eot_ends(pipe: Pipeline, prompts: Sequence[str], config: AttendExciteConfig) -> list[int | None]:
    """Per prompt, the <eot> position where A&E's softmax stops (config.normalize_eot, else the model's), else None."""
    normalize = model_config(pipe, config).normalize_eot
    return [eot_index(pipe.tokenizer, prompt) if normalize else None for prompt in prompts]


def _decode(pipe: Pipeline, latents: torch.Tensor) -> np.ndarray:
    images = decode_latents(pipe, latents)
    return pipe.image_processor.postprocess(images, output_type="np", do_denormalize=[True] * len(images))


def _prompt_subjects(pipe: Pipeline, prompt: str, token_indices) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Checked subject indices of one prompt (automatic when None) and their tokens."""
    tokenizer = pipe.tokenizer
    check_prompt(prompt)
    check_prompt_length(tokenizer, prompt)
    check_shared_positions(pipe, prompt)
    if token_indices is None:
        token_indices = subject_token_indices(tokenizer, prompt)
    token_indices = check_token_indices(tokenizer, prompt, token_indices)
    return token_indices, tuple(prompt_tokens(tokenizer, prompt)[i] for i in token_indices)


@torch.no_grad()
def attend_and_excite_batch(
    pipe: Pipeline,
    prompts: Sequence[str],
    token_indices: Sequence[tuple[int, ...] | list[int] | None] | None = None,
    *,
    seeds: Sequence[int],
    config: AttendExciteConfig = AttendExciteConfig(),
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    baseline: bool = False,
    step_callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> list[AttendExciteResult]:
    """Generate one image per (prompt, seed, indices) with Attend-and-Excite, the whole batch through each UNet call.

    ``baseline=True``: plain SD with the same seeds and sampler. ``step_callback(i, t, latents)`` sees the batch's
    latents each guidance forward runs on (after that step's A&E update).
    """
    start = time.perf_counter()
    prompts = list(prompts)
    if not prompts or len(seeds) != len(prompts):
        raise ValueError(f"Give one seed per prompt: {len(prompts)} prompts, {len(seeds)} seeds.")
    token_indices = list(token_indices) if token_indices is not None else [None] * len(prompts)
    if len(token_indices) != len(prompts):
        raise ValueError(f"Give one token-index tuple (or None) per prompt: {len(prompts)} prompts, {len(token_indices)} tuples.")
    subjects = [_prompt_subjects(pipe, prompt, indices) for prompt, indices in zip(prompts, token_indices)]
    default_height, default_width = default_size(pipe)
    height, width = height or default_height, width or default_width
    check_image_size(height, width)
    device = pipe._execution_device
    do_cfg = guidance_scale > 1.0
    batch = len(prompts)

    # 1. Encode the prompts (the A&E forward uses the conditional embeddings alone)
    conditioning, unconditional = encode_prompts(pipe, prompts, device, do_cfg, height, width)
    cfg_conditioning = unconditional.cat(conditioning) if do_cfg else conditioning

    # 2. Timesteps, initial noise (one CPU generator per image, as the pipeline with a list of generators)
    pipe.scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = pipe.scheduler.timesteps
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    latents = pipe.prepare_latents(batch, pipe.unet.config.in_channels, height, width, conditioning.embeds.dtype, device, generators)
    extra_step_kwargs = pipe.prepare_extra_step_kwargs(generators, 0.0)

    # 3. Denoising loop: the A&E update on the guided steps, then the usual CFG step
    ends = eot_ends(pipe, prompts, config)
    guidance = AttendExciteGuidance(
        pipe, conditioning, [indices for indices, _ in subjects], ends, config, len(timesteps), height, width
    )
    guided_steps, history = [], []
    with attention_hook(pipe.unet, guidance.layers, guidance.store):
        for i, t in enumerate(timesteps):
            if not baseline and guidance.applies(i):
                guided = guidance(latents, t, i)
                latents = guided.latents
                guided_steps.append(i)
                history.append(guided)
            if step_callback is not None:
                step_callback(i, t, latents)
            latent_model_input = torch.cat([latents] * 2) if do_cfg else latents
            latent_model_input = pipe.scheduler.scale_model_input(latent_model_input, t)
            noise_pred = pipe.unet(latent_model_input, t, **cfg_conditioning.unet_kwargs()).sample
            if do_cfg:
                noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
            latents = pipe.scheduler.step(noise_pred, t, latents, **extra_step_kwargs).prev_sample

    # 4. Decode
    pixels = _decode(pipe, latents)
    images = pipe.numpy_to_pil(pixels)
    seconds = (time.perf_counter() - start) / batch
    return [
        AttendExciteResult(
            image=images[b],
            pixels=pixels[b],
            token_indices=subjects[b][0],
            tokens=subjects[b][1],
            guided_steps=list(guided_steps),
            losses=[step.losses[b] for step in history],
            max_attention=[step.max_attention[b] for step in history],
            refinement_iterations={
                i: step.refinement_iterations[b] for i, step in zip(guided_steps, history) if step.refinement_iterations[b] is not None
            },
            seconds=seconds,
        )
        for b in range(batch)
    ]


def attend_and_excite(
    pipe: Pipeline,
    prompt: str,
    token_indices: tuple[int, ...] | list[int] | None = None,
    *,
    seed: int = 0,
    config: AttendExciteConfig = AttendExciteConfig(),
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    baseline: bool = False,
    step_callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> AttendExciteResult:
    """Generate one image with Attend-and-Excite (``baseline=True``: plain SD with the same seed and sampler)."""
    return attend_and_excite_batch(
        pipe, [prompt], [token_indices], seeds=[seed], config=config, num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale, height=height, width=width, baseline=baseline, step_callback=step_callback,
    )[0]
