"""Time and memory of SD v1.4 and SDXL base at their real sizes on one GPU, with random weights: one command.

    python benchmarks/gpu_check.py --out reports/benchmarks.md
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check.md

The first is the one command for a GPU machine: about 4-5 minutes on an H100 by estimate (not yet timed on a GPU),
and never more than its ``--budget`` of 450 s of measuring plus about 20 s of imports and the last write, so an
8-minute slot always ends with the section written. The second, the dry run, takes about a minute on one CPU thread.

Random weights time and fill memory as real ones do, so nothing is downloaded: the UNet, VAE and text encoders are
built on the device from the configs of ``CompVis/stable-diffusion-v1-4`` and ``stabilityai/stable-diffusion-xl-base-1.0``
(written out below), the tokenizers offline (``fidelity_lib.models.clip_tokenizer``), ST's CLIP ViT-B/32 with random
weights (``fidelity_lib.clip.random_clip``). Measured, most wanted first:

- SD v1.4, fp16, 512x512, 50 PLMS steps, per image: plain SD; our A&E and diffusers' A&E pipeline, refinement off
  and at its maximum; ST with checkpointing, 3 passes; seconds and peak memory, and their ratios to plain SD;
- our batched A&E (``attend_and_excite_batch``, paper defaults) at batch 1, 4 and 16, in images per second;
- SDXL base, fp16, 1024x1024: plain SDXL and our A&E, refinement off and at its maximum;
- components: prompt encoding, one CFG UNet call and one VAE decode of both models at 512 and 1024, fp16 and fp32;
- parity: A&E's refinement iterations per threshold step in fp16 and in fp32, same weights, prompts and seeds.

A measurement starts only while the time budget lasts and an alarm cuts one that runs past it; the section is
rewritten after every measurement, so a run that is stopped still leaves what it measured, and says what it skipped.
``--dry-run`` runs the same code on the CPU with tiny widths, 32-64 px and 3 steps (``tests/test_gpu_check.py``).
"""

from __future__ import annotations

import argparse
import gc
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import (
    AutoencoderKL, StableDiffusionAttendAndExcitePipeline, StableDiffusionPipeline, StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from bench_attend_excite import ForwardCounter  # benchmarks/ siblings: run as python benchmarks/gpu_check.py
from bench_sdxl_attend_excite import LivePeak
from bench_spacetime import PROMPT as ST_PROMPT
from fidelity_lib.attend_excite import AttendExciteConfig, attend_and_excite, attend_and_excite_batch
from fidelity_lib.clip import ClipModel, random_clip
from fidelity_lib.components import load_loss_clip
from fidelity_lib.conditioning import Pipeline, decode_latents, encode_prompts
from fidelity_lib.datasets import PromptRecord, load_prompt_set
from fidelity_lib.layout.predictor import ObjectPlacement
from fidelity_lib.models import clip_tokenizer, pndm_scheduler
from fidelity_lib.report import BENCHMARKS, write_benchmark_section
from fidelity_lib.spacetime import PAPER_CLIP_ARCH, SpaceTimeConfig, spacetime_generate

SECTION = "gpu_check"
PROMPT_SET = "ae_animal_animal"  # record i with seed i: A&E prompts with their subject token indices
ST_LAYOUT = [ObjectPlacement("cat", "a cat", 0.3, 0.5), ObjectPlacement("dog", "a dog", 0.7, 0.5)]
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
MODELS = {"sd14": "SD v1.4", "sdxl": "SDXL base 1.0"}
DRIVER_QUERY = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]

SD14 = {  # CompVis/stable-diffusion-v1-4
    "unet": dict(  # unet/config.json
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=8, cross_attention_dim=768, act_fn="silu", center_input_sample=False, downsample_padding=1,
        flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32,
    ),
    "vae": dict(  # vae/config.json
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu",
        norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
    ),
    "text_encoder": dict(  # text_encoder/config.json (openai/clip-vit-large-patch14's text tower)
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    ),
}
SDXL = {  # stabilityai/stable-diffusion-xl-base-1.0
    "unet": dict(  # unet/config.json
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), mid_block_type="UNetMidBlock2DCrossAttn",
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_embed_type_num_heads=64,
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, act_fn="silu", center_input_sample=False,
        class_embeddings_concat=False, conv_in_kernel=3, conv_out_kernel=3, downsample_padding=1, dual_cross_attention=False,
        flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32,
        only_cross_attention=False, resnet_out_scale_factor=1.0, resnet_skip_time_act=False,
        resnet_time_scale_shift="default", time_embedding_type="positional",
    ),
    "vae": dict(  # vae/config.json
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu",
        norm_num_groups=32, sample_size=1024, scaling_factor=0.13025, force_upcast=True,
    ),
    "text_encoder": SD14["text_encoder"],  # text_encoder/config.json: the same CLIP ViT-L/14 text tower
    "text_encoder_2": dict(  # text_encoder_2/config.json (OpenCLIP ViT-bigG/14's text tower, with its projection)
        vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
        max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=1280,
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    ),
}
_TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
_TINY_VAE = dict(block_out_channels=(32,) * 4, layers_per_block=1, norm_num_groups=8, sample_size=64)
TINY = {  # --dry-run: the same layouts with tiny widths (as tests/model_structures.py), 64 px by default; 8 norm groups,
    # so that a group holds more than one value at the 1x1 bottom of SD v1.4's UNet at 64 px
    "sd14": {"unet": dict(sample_size=8, block_out_channels=(32,) * 4, layers_per_block=1, cross_attention_dim=32,
                          norm_num_groups=8),
             "vae": _TINY_VAE, "text_encoder": _TINY_TEXT},
    "sdxl": {"unet": dict(sample_size=8, block_out_channels=(32, 32, 64), layers_per_block=1,
                          transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 8), cross_attention_dim=64,
                          addition_time_embed_dim=8,
                          projection_class_embeddings_input_dim=8 * 6 + 32, norm_num_groups=8),
             "vae": _TINY_VAE, "text_encoder": _TINY_TEXT, "text_encoder_2": _TINY_TEXT},
}

IMAGE_ROWS = {  # table -> rows (label, method, A&E setting)
    "sd14": (("plain SD", "plain", None), ("ours A&E, refinement off", "ours", "refinement off"),
             ("ours A&E, refinement at its maximum", "ours", "refinement at its maximum"),
             ("diffusers A&E, refinement off", "diffusers", "refinement off"),
             ("diffusers A&E, refinement at its maximum", "diffusers", "refinement at its maximum"),
             ("ST, checkpointing, 3 passes", "st", None)),
    "sdxl": (("plain SDXL", "plain", None), ("ours A&E, refinement off", "ours", "refinement off"),
             ("ours A&E, refinement at its maximum", "ours", "refinement at its maximum")),
}
NOT_REACHED, SKIPPED, CUT = "not reached", "skipped for time", "cut at the time budget"


@dataclass(frozen=True)
class Scale:
    """What a run measures at: the real sizes on a GPU, or the dry run's tiny ones on the CPU."""

    dry: bool
    steps: int
    batches: tuple[int, ...]
    parity_batch: int
    component_sizes: tuple[int, ...]
    warmup_steps: int = 2
    repeats: int = 3  # component calls timed, after one warm-up call


GPU_SCALE = Scale(dry=False, steps=50, batches=(1, 4, 16), parity_batch=4, component_sizes=(512, 1024))
DRY_SCALE = Scale(dry=True, steps=3, batches=(1, 2), parity_batch=2, component_sizes=(32, 64))


def model_configs(model: str, dry: bool) -> dict[str, dict]:
    """The repo's configs of ``model``; with ``dry``, the dry run's tiny widths and 64 px default size."""
    real = {"sd14": SD14, "sdxl": SDXL}[model]
    return {part: {**config, **(TINY[model][part] if dry else {})} for part, config in real.items()}


def image_side(model: str, dry: bool) -> int:
    """The model's default image side: its UNet's sample size times the VAE's factor 8."""
    return model_configs(model, dry)["unet"]["sample_size"] * 8


def build_pipeline(model: str, dtype: torch.dtype, device: torch.device, dry: bool) -> Pipeline:
    """Random weights in the model's configuration, made in fp32 on ``device`` from seed 0, then cast to ``dtype``
    (fp16 and fp32 hold the same weights up to rounding); PLMS, as the book runs every model."""
    configs = model_configs(model, dry)
    torch.manual_seed(0)
    with torch.device(device):
        parts = {"unet": UNet2DConditionModel(**configs["unet"]), "vae": AutoencoderKL(**configs["vae"]),
                 "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))}
        if model == "sdxl":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
    parts = {name: module.to(dtype).eval() for name, module in parts.items()}  # eval, not frozen: as from_pretrained
    if model == "sd14":
        pipe = StableDiffusionPipeline(**parts, tokenizer=clip_tokenizer(), scheduler=pndm_scheduler(), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    else:
        tokenizer_2 = clip_tokenizer()
        tokenizer_2.pad_token = "!"  # stabilityai/stable-diffusion-xl-base-1.0, tokenizer_2/special_tokens_map.json
        pipe = StableDiffusionXLPipeline(**parts, tokenizer=clip_tokenizer(), tokenizer_2=tokenizer_2,
                                         scheduler=pndm_scheduler(), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_modules(pipe: Pipeline) -> list[torch.nn.Module]:
    """The pipeline's models (UNet, VAE, text encoders)."""
    return [module for module in pipe.components.values() if isinstance(module, torch.nn.Module)]


def weight_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers of ``modules``."""
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


def ae_configs(side: int) -> dict[str, AttendExciteConfig]:
    """A&E's settings at image side ``side``, its maps on the grid a quarter of the latent side (16x16 at 512, the
    paper's on SD v1.4; 32x32 at 1024, the book's on SDXL); thresholds 1.0 make every refinement run to its maximum."""
    paper = AttendExciteConfig(attention_res=(side // 32, side // 32))
    return {"paper defaults": paper, "refinement off": replace(paper, thresholds={}),
            "refinement at its maximum": replace(paper, thresholds=dict.fromkeys(paper.thresholds, 1.0))}


def measured(device: torch.device, call: Callable[[], object]) -> tuple[object, float, int]:
    """(output, seconds, the most bytes the call allocated above what was allocated before it): the CUDA allocator's
    peak on a GPU, the live tensor storages ``LivePeak`` counts on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        output = call()
        torch.cuda.synchronize(device)
        return output, time.perf_counter() - start, torch.cuda.max_memory_allocated(device) - before
    with LivePeak() as live:
        start = time.perf_counter()
        output = call()
        seconds = time.perf_counter() - start
    return output, seconds, live.peak


def environment(device: torch.device) -> str:
    """The device, its driver, and the software versions."""
    versions = f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}"
    if device.type != "cuda":
        return f"CPU ({platform.processor() or platform.machine()}), one thread, {versions}"
    query = subprocess.run([*DRIVER_QUERY, f"--id={device.index or 0}"], capture_output=True, text=True)
    driver = query.stdout.strip() if query.returncode == 0 else f"unknown ({' '.join(DRIVER_QUERY)}: {query.stderr.strip()})"
    tf32 = f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32}"
    return (f"{torch.cuda.get_device_name(device)}, driver {driver}, CUDA {torch.version.cuda}, {versions}, "
            f"{tf32} (torch's defaults)")


class OutOfTime(BaseException):
    """The time budget ended during a measurement (a BaseException, so that no library ``except Exception`` eats it)."""


class Budget:
    """The run's wall-clock budget: whether a measurement may start, and an alarm that cuts one at the end."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    @contextmanager
    def alarm(self) -> Iterator[None]:
        """Raise OutOfTime in the main thread when the budget ends inside the block."""
        def ring(signum, frame):
            raise OutOfTime

        previous = signal.signal(signal.SIGALRM, ring)
        signal.setitimer(signal.ITIMER_REAL, max(self.left(), 0.001))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def image_key(model: str, label: str) -> str:
    return f"{model}: {label}"


def component_key(model: str, dtype: str, side: int) -> str:
    return f"components: {model} {dtype} {side}"


def planned(scale: Scale) -> list[str]:
    """Every measurement's key, in the order the run makes them."""
    keys = [image_key("sd14", label) for label, _, _ in IMAGE_ROWS["sd14"]]
    keys += [f"batch {batch}" for batch in scale.batches]
    keys += [image_key("sdxl", label) for label, _, _ in IMAGE_ROWS["sdxl"]]
    for model, dtype in (("sd14", "fp16"), ("sdxl", "fp16"), ("sdxl", "fp32"), ("sd14", "fp32")):
        keys += [component_key(model, dtype, side) for side in scale.component_sizes]
    return keys + ["parity"]


class GpuCheck:
    """The measurements of one run, the pipelines they share, and the section they write."""

    def __init__(self, scale: Scale, device: torch.device, budget: Budget, out: Path) -> None:
        self.scale, self.device, self.budget, self.out = scale, device, budget, out
        self.environment = environment(device)
        self.results: dict[str, dict | str] = dict.fromkeys(planned(scale), NOT_REACHED)
        self.pipes: dict[tuple[str, str], Pipeline] = {}
        self.counters: dict[tuple[str, str], ForwardCounter] = {}
        self.diffusers_pipes: dict[tuple[str, str], StableDiffusionAttendAndExcitePipeline] = {}
        self.clip: ClipModel | None = None
        self.records = load_prompt_set(PROMPT_SET)  # record i with seed i

    def pipe(self, model: str, dtype: str) -> Pipeline:
        """The pipeline of ``model`` in ``dtype`` on the device, built on first use."""
        if (model, dtype) not in self.pipes:
            pipe = build_pipeline(model, DTYPES[dtype], self.device, self.scale.dry)
            self.pipes[model, dtype], self.counters[model, dtype] = pipe, ForwardCounter(pipe.unet)
        return self.pipes[model, dtype]

    def release(self, model: str, dtype: str) -> None:
        """Free a pipeline no later measurement uses."""
        self.pipes.pop((model, dtype), None)
        self.counters.pop((model, dtype), None)
        self.diffusers_pipes.pop((model, dtype), None)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def loss_clip(self) -> ClipModel:
        """ST's CLIP: ViT-B/32 with random weights, or the tiny profile's in the dry run (moved to the device by ST)."""
        if self.clip is None:
            self.clip = load_loss_clip("tiny") if self.scale.dry else random_clip(PAPER_CLIP_ARCH)
        return self.clip

    def generate(self, model: str, method: str, steps: int, config: AttendExciteConfig) -> dict[int, int] | None:
        """One image of ``method`` with the fp16 pipeline at its default size; A&E's refinement iterations, or None."""
        pipe, record = self.pipe(model, "fp16"), self.records[0]
        generator = torch.Generator("cpu").manual_seed(0)
        if method == "plain":
            pipe(record.prompt, num_inference_steps=steps, generator=generator, output_type="np")
            return None
        if method == "ours":
            result = attend_and_excite(pipe, record.prompt, record.subject_token_indices, seed=0, config=config,
                                       num_inference_steps=steps)
            return result.refinement_iterations
        if method == "diffusers":
            if (model, "fp16") not in self.diffusers_pipes:
                parts = {name: part for name, part in pipe.components.items() if name != "image_encoder"}
                reference = StableDiffusionAttendAndExcitePipeline(**parts, requires_safety_checker=False)
                reference.set_progress_bar_config(disable=True)
                self.diffusers_pipes[model, "fp16"] = reference
            processors = pipe.unet.attn_processors  # diffusers restores them only when its call completes
            try:
                self.diffusers_pipes[model, "fp16"](
                    record.prompt, token_indices=list(record.subject_token_indices), num_inference_steps=steps,
                    generator=generator, output_type="np", max_iter_to_alter=config.max_iter_to_alter,
                    thresholds=config.thresholds, scale_factor=config.scale_factor, attn_res=config.attention_res,
                )
            finally:
                pipe.unet.set_attn_processor(processors)
            return None
        if method == "st":
            st_config = SpaceTimeConfig(num_inference_steps=steps, checkpointing=True)
            spacetime_generate(pipe, ST_PROMPT, ST_LAYOUT, seed=0, config=st_config, clip_model=self.loss_clip())
            return None
        raise ValueError(f"unknown method {method!r}")

    def image(self, model: str, method: str, setting: str | None) -> dict:
        """Seconds, peak memory and UNet forwards of one image, after a short warm-up of the same method."""
        pipe = self.pipe(model, "fp16")
        configs = ae_configs(image_side(model, self.scale.dry))
        self.generate(model, method, self.scale.warmup_steps, configs["refinement off"])
        self.counters[model, "fp16"].take()
        config = configs[setting or "refinement off"]
        refinement, seconds, above = measured(self.device, lambda: self.generate(model, method, self.scale.steps, config))
        modules = pipeline_modules(pipe) + ([self.loss_clip().model] if method == "st" else [])
        return {"seconds": seconds, "above": above, "peak": weight_bytes(*modules) + above, "refinement": refinement,
                "forwards": self.counters[model, "fp16"].take()}

    def batch(self, records: list[PromptRecord], dtype: str, steps: int, config: AttendExciteConfig) -> list:
        return attend_and_excite_batch(
            self.pipe("sd14", dtype), [r.prompt for r in records], [r.subject_token_indices for r in records],
            seeds=list(range(len(records))), config=config, num_inference_steps=steps,
        )

    def batched(self, size: int) -> dict:
        """Our batched A&E on ``size`` (prompt, seed) items with the paper's settings."""
        configs, records = ae_configs(image_side("sd14", self.scale.dry)), self.records[:size]
        self.batch(records, "fp16", self.scale.warmup_steps, configs["refinement off"])
        config = configs["paper defaults"]
        results, seconds, above = measured(self.device, lambda: self.batch(records, "fp16", self.scale.steps, config))
        weights = weight_bytes(*pipeline_modules(self.pipe("sd14", "fp16")))
        return {"seconds": seconds, "above": above, "peak": weights + above,
                "refinement": statistics.mean(sum(r.refinement_iterations.values()) for r in results)}

    def components(self, model: str, dtype: str, side: int) -> dict:
        """Prompt encoding, one CFG UNet call (batch 2) and one VAE decode at ``side``: median seconds of the repeats
        after a warm-up call, and the most each allocated above what was allocated before it."""
        pipe, prompt = self.pipe(model, dtype), self.records[0].prompt
        conditioning, unconditional = encode_prompts(pipe, [prompt], self.device, True, side, side)
        cfg = unconditional.cat(conditioning)
        latent = side // pipe.vae_scale_factor
        generator = torch.Generator("cpu").manual_seed(0)
        latents = torch.randn(2, pipe.unet.config.in_channels, latent, latent, generator=generator)
        latents = latents.to(self.device, DTYPES[dtype])
        timestep = torch.tensor(981, device=self.device)
        calls = {
            "encode": lambda: encode_prompts(pipe, [prompt], self.device, True, side, side),
            "unet": lambda: pipe.unet(latents, timestep, **cfg.unet_kwargs()),
            "decode": lambda: decode_latents(pipe, latents[:1]),
        }
        result = {"parameters": {name: sum(p.numel() for p in part.parameters()) for name, part in pipe.components.items()
                                 if isinstance(part, torch.nn.Module)},
                  "weights": weight_bytes(*pipeline_modules(pipe))}
        with torch.no_grad():
            for name, call in calls.items():
                call()
                runs = [measured(self.device, call)[1:] for _ in range(self.scale.repeats)]
                result[name] = {"seconds": statistics.median(s for s, _ in runs), "above": max(a for _, a in runs)}
        return result

    def parity(self) -> dict:
        """A&E (paper defaults) on the same items in fp16 and in fp32: refinement iterations and step-0 losses."""
        config = ae_configs(image_side("sd14", self.scale.dry))["paper defaults"]
        records = self.records[:self.scale.parity_batch]
        runs = {dtype: self.batch(records, dtype, self.scale.steps, config) for dtype in DTYPES}
        return {"rows": [
            {"prompt": record.prompt, "seed": seed, "fp16": half.refinement_iterations, "fp32": full.refinement_iterations,
             "loss16": half.losses[0], "loss32": full.losses[0]}
            for seed, (record, half, full) in enumerate(zip(records, runs["fp16"], runs["fp32"]))
        ]}

    def measure(self, key: str, function: Callable[[], dict]) -> None:
        """Run one measurement while the budget lasts; record its numbers or why it has none; rewrite the section."""
        if self.budget.left() <= 0:
            self.results[key] = SKIPPED
        else:
            print(f"[{self.budget.elapsed():.0f} s] {key}", flush=True)
            try:
                with self.budget.alarm():
                    result = function()
                self.results[key] = result
            except OutOfTime:
                self.results[key] = CUT
            except Exception as error:  # printed in full and written in the section: one failure must not cost the slot
                traceback.print_exc()
                message = f"{type(error).__name__}: {error}".replace("|", "/").replace("\n", " ")
                self.results[key] = f"failed: {message[:300]}"
        print(f"    {self.results[key]}", flush=True)
        self.write(finished=False)

    def write(self, finished: bool) -> None:
        elapsed = self.budget.elapsed()
        status = (f"finished in {elapsed:.0f} s of a {self.budget.seconds:.0f} s budget" if finished
                  else f"partial: written {elapsed:.0f} s into a run that had not finished")
        write_benchmark_section(SECTION, markdown(self.results, self.scale, self.environment, status), self.out)

    def run(self) -> None:
        """Every measurement, most wanted first; pipelines are freed once no later measurement needs them."""
        self.write(finished=False)
        for label, method, setting in IMAGE_ROWS["sd14"]:
            self.measure(image_key("sd14", label), lambda: self.image("sd14", method, setting))
        for size in self.scale.batches:
            self.measure(f"batch {size}", lambda: self.batched(size))
        for label, method, setting in IMAGE_ROWS["sdxl"]:
            self.measure(image_key("sdxl", label), lambda: self.image("sdxl", method, setting))
        for model, dtype in (("sd14", "fp16"), ("sdxl", "fp16"), ("sdxl", "fp32"), ("sd14", "fp32")):
            for side in self.scale.component_sizes:
                self.measure(component_key(model, dtype, side), lambda: self.components(model, dtype, side))
            if model == "sdxl":
                self.release(model, dtype)
        self.measure("parity", self.parity)
        self.write(finished=True)


def _iterations(refinement: dict[int, int]) -> str:
    return ", ".join(f"{step}: {count}" for step, count in refinement.items()) or "none"


def _gb(value: int) -> str:
    return f"{value / 1e9:.3g}"


def _ratio(value: float, plain: dict | str, key: str) -> str:
    return f"{value / plain[key]:.2f}" if isinstance(plain, dict) else "-"


def _image_table(results: dict, model: str) -> list[str]:
    plain = results[image_key(model, IMAGE_ROWS[model][0][0])]
    lines = [
        "| method | seconds | time / plain | peak GB | peak / plain | above weights GB | refinement iterations per "
        "threshold step | UNet forwards: A&E (batch 1) + CFG (batch 2) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, _, _ in IMAGE_ROWS[model]:
        r = results[image_key(model, label)]
        if isinstance(r, str):
            lines.append(f"| {label} | {r} |" + " - |" * 6)
            continue
        refinement = "-" if r["refinement"] is None else _iterations(r["refinement"])
        lines.append(
            f"| {label} | {r['seconds']:.3g} | {_ratio(r['seconds'], plain, 'seconds')} | {_gb(r['peak'])} | "
            f"{_ratio(r['peak'], plain, 'peak')} | {_gb(r['above'])} | {refinement} | {r['forwards']} |"
        )
    return lines


def _batch_table(results: dict, scale: Scale) -> list[str]:
    plain = results[image_key("sd14", IMAGE_ROWS["sd14"][0][0])]
    lines = ["| batch | seconds | images / s | images / s over plain SD's | peak GB | above weights GB | mean refinement "
             "iterations per image |", "|---|---|---|---|---|---|---|"]
    for size in scale.batches:
        r = results[f"batch {size}"]
        if isinstance(r, str):
            lines.append(f"| {size} | {r} |" + " - |" * 5)
            continue
        speed = f"{size / r['seconds'] * plain['seconds']:.2f}" if isinstance(plain, dict) else "-"
        lines.append(f"| {size} | {r['seconds']:.3g} | {size / r['seconds']:.3g} | {speed} | {_gb(r['peak'])} | "
                     f"{_gb(r['above'])} | {r['refinement']:.3g} |")
    return lines


def _component_table(results: dict, scale: Scale) -> list[str]:
    lines = ["| model | dtype | side | parameters M (UNet / VAE / text encoders) | weights GB | prompt encoding ms | "
             "UNet CFG call ms | UNet call above weights GB | VAE decode ms | decode above weights GB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model, dtype, side in ((m, d, s) for m in MODELS for d in DTYPES for s in scale.component_sizes):
        r, row = results[component_key(model, dtype, side)], f"| {MODELS[model]} | {dtype} | {side} |"
        if isinstance(r, str):
            lines.append(f"{row} {r} |" + " - |" * 6)
            continue
        p = r["parameters"]
        text = " + ".join(f"{p[name] / 1e6:.1f}" for name in ("text_encoder", "text_encoder_2") if name in p)
        lines.append(
            f"{row} {p['unet'] / 1e6:.1f} / {p['vae'] / 1e6:.1f} / {text} | {_gb(r['weights'])} | "
            f"{r['encode']['seconds'] * 1e3:.3g} | {r['unet']['seconds'] * 1e3:.3g} | {_gb(r['unet']['above'])} | "
            f"{r['decode']['seconds'] * 1e3:.3g} | {_gb(r['decode']['above'])} |"
        )
    return lines


def _parity_table(results: dict) -> list[str]:
    r = results["parity"]
    if isinstance(r, str):
        return [f"Parity: {r}."]
    lines = ["| prompt | seed | fp16 refinement iterations | fp32 refinement iterations | same decisions | step-0 loss fp16 "
             "| step-0 loss fp32 |", "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['prompt']} | {row['seed']} | {_iterations(row['fp16'])} | {_iterations(row['fp32'])} | "
                     f"{'yes' if row['fp16'] == row['fp32'] else 'no'} | {row['loss16']:.5f} | {row['loss32']:.5f} |")
    same = sum(row["fp16"] == row["fp32"] for row in r["rows"])
    return lines + ["", f"fp16 and fp32 make the same refinement decisions on {same} of {len(r['rows'])} images."]


def markdown(results: dict, scale: Scale, environment: str, status: str) -> str:
    """The section: what ran where, the five tables, and which measurements have no numbers and why."""
    sd, xl = image_side("sd14", scale.dry), image_side("sdxl", scale.dry)
    record = load_prompt_set(PROMPT_SET)[0]
    missing = {state: [key for key, r in results.items() if isinstance(r, str) and r.startswith(state)]
               for state in (SKIPPED, CUT, "failed", NOT_REACHED)}
    notes = [f"- {state}: {', '.join(keys)}" for state, keys in missing.items() if keys]
    if scale.dry:
        lines = ["## GPU check: dry run (CPU, tiny)", "",
                 "**dry run (CPU, tiny)**: the GPU check's code on the CPU with tiny widths (`TINY` in the script), "
                 f"32-64 px, {scale.steps} steps and a tiny CLIP. It checks the code; these are not Stable Diffusion "
                 "numbers. Memory above weights: the live tensor bytes `LivePeak` counts "
                 "(`benchmarks/bench_sdxl_attend_excite.py`), not the CUDA allocator's.", ""]
    else:
        lines = ["## GPU check: SD v1.4 and SDXL base at their real sizes, random weights", ""]
    allocated = ("`LivePeak`'s count" if scale.dry
                 else "`torch.cuda.max_memory_allocated()`; no CUDA context, no allocator cache")
    lines += [
        f"{environment}; {status} (`benchmarks/gpu_check.py`). Random weights in the configurations of "
        "`CompVis/stable-diffusion-v1-4` and `stabilityai/stable-diffusion-xl-base-1.0` (written out in the script; "
        "random weights time and fill memory as real ones do), in eval mode and not frozen, as `from_pretrained` "
        f"loads them; nothing downloaded. PLMS, {scale.steps} steps, CFG 7.5, \"{record.prompt}\" (subjects "
        f"{record.subject_token_indices}), seed 0; ST: \"{ST_PROMPT}\", two objects, CLIP "
        f"{'tiny' if scale.dry else 'ViT-B/32'} with random weights. Seconds: one call after a {scale.warmup_steps}-step "
        "warm-up of the same method, synchronised. Peak = the weights the call uses + the most it allocated above "
        f"what was allocated before it ({allocated}). "
        "A&E reads its maps at a quarter of the latent side (16x16 at 512, 32x32 at 1024); \"at its maximum\": "
        "thresholds 1.0 at steps 0, 10 and 20, so each refinement runs its 20 iterations.",
        "",
        *notes,
        *([""] if notes else []),
        f"### SD v1.4, fp16, {sd}x{sd}, per image (ratios to plain SD, same run)",
        "",
        *_image_table(results, "sd14"),
        "",
        f"### Our batched Attend-and-Excite, SD v1.4, fp16, {sd}x{sd}, paper defaults",
        "",
        *_batch_table(results, scale),
        "",
        f"### SDXL base 1.0, fp16, {xl}x{xl}, per image (ratios to plain SDXL, same run)",
        "",
        *_image_table(results, "sdxl"),
        "",
        f"### Components: median of {scale.repeats} calls after one warm-up (SDXL's VAE decodes in fp32: force_upcast)",
        "",
        *_component_table(results, scale),
        "",
        f"### Parity: A&E's refinement decisions in fp16 and fp32 (SD v1.4, paper defaults, one batch of "
        f"{scale.parity_batch}, the same weights up to rounding)",
        "",
        *_parity_table(results),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help=f"the file whose {SECTION!r} section is written (default: {BENCHMARKS})")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds of measuring; no measurement runs past them")
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU at tiny sizes")
    args = parser.parse_args()
    if args.dry_run:
        if args.out is None or args.out.resolve() == BENCHMARKS.resolve():
            parser.error(f"--dry-run writes tiny CPU numbers: give --out a file other than {BENCHMARKS}")
        torch.set_num_threads(1)
        device, scale = torch.device("cpu"), DRY_SCALE
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: this check measures a GPU. Pass --dry-run (with --out) to run its code on the CPU.")
    else:
        device, scale = torch.device("cuda", torch.cuda.current_device()), GPU_SCALE
    check = GpuCheck(scale, device, Budget(args.budget), args.out or BENCHMARKS)
    check.run()
    failed = [key for key, r in check.results.items() if isinstance(r, str) and r.startswith("failed")]
    print(f"wrote the {SECTION!r} section of {check.out} in {check.budget.elapsed():.0f} s", flush=True)
    if failed:
        sys.exit(f"{len(failed)} measurements failed (tracebacks above, errors in the section): {', '.join(failed)}")


if __name__ == "__main__":
    main()
