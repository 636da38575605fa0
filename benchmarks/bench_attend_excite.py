"""Per-image time of plain SD, our Attend-and-Excite and diffusers' deprecated A&E pipeline on the same components.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_attend_excite.py [--steps 50] [--prompts 2] [--seeds 1]

Runs the three methods interleaved on the tiny random-weight pipeline (CPU), in two settings: the paper defaults
(on the random tiny model every prompt triggers refinement at steps 0, 10 and 20) and the paper defaults without
refinement thresholds (what a prompt that never triggers refinement costs). Writes its section of
reports/benchmarks.md. These are tiny-model CPU numbers: they compare implementations, not Stable Diffusion speed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from fidelity_lib.attend_excite import AttendExciteConfig, attend_and_excite
from fidelity_lib.datasets import load_prompts
from fidelity_lib.models import tiny_pipeline
from fidelity_lib.report import BENCHMARKS, write_benchmark_section

SETTINGS = {
    "paper defaults": AttendExciteConfig(),
    "paper defaults, no refinement": AttendExciteConfig(thresholds={}),
}

class ForwardCounter:
    """Counts UNet forwards by batch size (1: A&E forward, 2: classifier-free-guidance forward)."""

    def __init__(self, unet):
        self.calls: list[int] = []
        unet.register_forward_pre_hook(lambda module, args: self.calls.append(args[0].shape[0]))

    def take(self) -> str:
        calls, self.calls = self.calls, []
        return f"{calls.count(1)} + {calls.count(2)}"

def timed(function):
    start = time.perf_counter()
    output = function()
    return output, time.perf_counter() - start

def run(steps: int, prompts: int, seeds: int) -> list[dict]:
    from diffusers import StableDiffusionAttendAndExcitePipeline

    pipe = tiny_pipeline()
    components = {name: module for name, module in pipe.components.items() if name != "image_encoder"}
    diffusers_pipe = StableDiffusionAttendAndExcitePipeline(**components, requires_safety_checker=False)
    diffusers_pipe.set_progress_bar_config(disable=True)
    counter = ForwardCounter(pipe.unet)
    records = [load_prompts(name)[0] for name in ("ae_animal_animal", "ae_animal_object", "ae_object_object")][:prompts]
    attend_and_excite(pipe, records[0].prompt, seed=0, num_inference_steps=2)  # warm-up
    counter.take()
    rows = []
    for setting, config in SETTINGS.items():
        for record in records:
            for seed in range(seeds):
                indices = list(record.subject_token_indices)
                plain, plain_s = timed(
                    lambda: pipe(
                        record.prompt, num_inference_steps=steps,
                        generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
                    ).images[0]
                )
                plain_forwards = counter.take()
                ours = attend_and_excite(pipe, record.prompt, indices, seed=seed, config=config, num_inference_steps=steps)
                ours_forwards = counter.take()
                reference, reference_s = timed(
                    lambda: diffusers_pipe(
                        record.prompt, token_indices=indices, num_inference_steps=steps,
                        generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
                        max_iter_to_alter=config.max_iter_to_alter, thresholds=config.thresholds,
                        scale_factor=config.scale_factor, attn_res=(16, 16),
                    ).images[0]
                )
                reference_forwards = counter.take()
                rows.append({
                    "setting": setting, "prompt": record.prompt, "seed": seed,
                    "plain_s": plain_s, "ours_s": ours.seconds, "diffusers_s": reference_s,
                    "refinement": sum(ours.refinement_iterations.values()),
                    "forwards": (plain_forwards, ours_forwards, reference_forwards),
                    "max_diff": float(np.abs(ours.pixels - reference).max()),
                })
                print(rows[-1], flush=True)
    return rows

def markdown(rows: list[dict], steps: int) -> str:
    lines = [
        "## Attend-and-Excite: ours vs diffusers' deprecated pipeline vs plain SD",
        "",
        f"Tiny random-weight SD-architecture pipeline (`tiny_pipeline()`, 64x64 images), **CPU numbers of a tiny model**, "
        f"{steps} PNDM steps, CFG 7.5, one thread, {platform.processor() or platform.machine()}, torch {torch.__version__}. "
        "The three methods run interleaved on the same components, prompts and seeds "
        "(`benchmarks/bench_attend_excite.py`). They say how the implementations compare, not how fast Stable "
        "Diffusion is. Forwards = A&E forwards (batch 1) + CFG forwards (batch 2). The machine is shared, so absolute "
        "times are noisy; the ratios are per image and then averaged.",
        "",
        "| setting | prompt | seed | refinement iterations | plain SD s | ours s | diffusers s | ours/diffusers | ours/plain | forwards plain / ours / diffusers | max abs pixel diff ours vs diffusers |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['setting']} | {row['prompt']} | {row['seed']} | {row['refinement']} | {row['plain_s']:.2f} | "
            f"{row['ours_s']:.2f} | {row['diffusers_s']:.2f} | {row['ours_s'] / row['diffusers_s']:.2f} | "
            f"{row['ours_s'] / row['plain_s']:.2f} | {' / '.join(row['forwards'])} | {row['max_diff']:.1e} |"
        )
    lines += ["", "| setting | mean ours/diffusers (target <= 0.7) | mean ours/plain (target <= 2.0 without refinement) |", "|---|---|---|"]
    for setting in SETTINGS:
        chosen = [row for row in rows if row["setting"] == setting]
        versus_diffusers = statistics.mean(row["ours_s"] / row["diffusers_s"] for row in chosen)
        versus_plain = statistics.mean(row["ours_s"] / row["plain_s"] for row in chosen)
        lines.append(f"| {setting} | {versus_diffusers:.2f} | {versus_plain:.2f} |")
    return "\n".join(lines) + "\n"

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--prompts", type=int, default=2, help="prompts, one per A&E set (at most 3)")
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = run(args.steps, args.prompts, args.seeds)
    write_benchmark_section("bench_attend_excite", markdown(rows, args.steps))
    print(f"wrote {BENCHMARKS}")

if __name__ == "__main__":
    main()
