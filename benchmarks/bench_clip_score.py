"""Batched, cached CLIP scoring (fidelity_lib.metrics.clip_score) vs a per-image loop written like A&E's script.

Same random open_clip ViT-B-16, same 64 images (16 A&E prompts x 4 seeds, 512x512 noise), one run each.
Writes/updates the "## CLIP scoring" section of reports/benchmarks.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_clip_score.py
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fidelity_lib.clip import random_clip
from fidelity_lib.datasets import load_prompt_set, prompt_folder_name
from fidelity_lib.metrics.clip_score import ClipScorer, clip_score, split_prompt, template_texts
from fidelity_lib.report import write_benchmark_section

DATASET, PROMPTS, SEEDS = "ae_animal_animal", 16, 4
HEADING = "## CLIP scoring (benchmarks/bench_clip_score.py)"

def write_images(root: Path) -> None:
    """PROMPTS x SEEDS random 512x512 PNGs in the generator's layout under root/sd/."""
    rng = np.random.default_rng(0)
    for record in load_prompt_set(DATASET)[:PROMPTS]:
        folder = root / "sd" / prompt_folder_name(record.prompt)
        folder.mkdir(parents=True)
        for seed in range(SEEDS):
            Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(folder / f"{seed}.png")

@torch.no_grad()
def original_embedding(clip, text: str) -> torch.Tensor:
    """The original get_embedding_for_prompt: 80 templates, full 77-token encode, normalise, mean, normalise."""
    features = clip.model.encode_text(clip.tokenizer(template_texts(text)))
    features = features / features.norm(dim=-1, keepdim=True)
    mean = features.mean(dim=0)
    return (mean / mean.norm()).float()

@torch.no_grad()
def original_loop(clip, root: Path) -> dict[str, list[float]]:
    """Per prompt folder: embed the prompt and its halves, then one image at a time, as the original script does."""
    results = {}
    for folder in sorted((root / "sd").iterdir()):
        prompt = folder.name
        first, second = split_prompt(prompt)
        full_e, first_e, second_e = (original_embedding(clip, text) for text in (prompt, first, second))
        for path in sorted(folder.glob("*.png")):
            image = clip.preprocess(Image.open(path)).unsqueeze(0)
            features = clip.model.encode_image(image)
            features = (features / features.norm(dim=-1, keepdim=True)).float()[0]
            results[str(path)] = [float(features @ e) for e in (full_e, first_e, second_e)]
    return results

def main() -> None:
    clip = random_clip("ViT-B-16", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root)
        start = time.perf_counter()
        reference = original_loop(clip, root)
        loop_seconds = time.perf_counter() - start
        start = time.perf_counter()
        frame = clip_score(root, DATASET, scorer=ClipScorer(clip, device="cpu", batch_size=32)).frame
        ours_seconds = time.perf_counter() - start
    ours = {path: [full, first, second] for path, full, first, second in frame[["path", "full_text", "first_half", "second_half"]].to_numpy()}
    max_diff = max(abs(a - b) for path in reference for a, b in zip(reference[path], ours[path]))
    images = len(reference)
    section = (
        f"{HEADING}\n\n"
        f"Random open_clip ViT-B-16 (fp32), {images} images ({PROMPTS} {DATASET} prompts x {SEEDS} seeds, 512x512), one run, "
        f"CPU {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}.\n\n"
        f"| scorer | seconds | images/s |\n|---|---|---|\n"
        f"| per-image loop like the original script | {loop_seconds:.1f} | {images / loop_seconds:.2f} |\n"
        f"| fidelity_lib clip_score (batched, cached, trimmed text) | {ours_seconds:.1f} | {images / ours_seconds:.2f} |\n\n"
        f"Speed-up: **{loop_seconds / ours_seconds:.1f}x**; largest difference in any similarity: {max_diff:.2e}.\n"
    )
    write_benchmark_section("bench_clip_score", section)
    print(section)

if __name__ == "__main__":
    main()
