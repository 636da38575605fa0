"""What the chapters run in each resolved profile: seeds, steps, generation settings, training data and provenance.

Paper runs the papers' sets with their defaults; toy runs each set's toy counterpart (``datasets.set_for_profile``) on
held-out prompts and seeds with the settings chosen on the toy world's development split; tiny checks the plumbing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from fidelity_lib.attend_excite import AttendExciteConfig
from fidelity_lib.datasets import TOY_SETS, TOY_SPLIT_SEEDS, PromptRecord, book_records, load_prompt_set
from fidelity_lib.generate import GenerationOptions, read_manifest
from fidelity_lib.layout import CocoFilter, TrainConfig, write_synthetic_coco
from fidelity_lib.report import Provenance
from fidelity_lib.toyworld.calibration import STEPS as TOY_STEPS
from fidelity_lib.toyworld.calibration import toy_generation

# At most this many steps for a chapter's part in the tiny profile, whatever was asked: each spatial-temporal image
# costs about ten plain samplings, so chapter 2's spatial-temporal part runs at most 4.
TINY_STEP_CAPS = {"02_generate_st": 4}


def chapter_seeds(resolved_profile: str, count: int, paper_count: int = 64) -> list[int]:
    """The seeds a chapter generates: 0.. (paper: ``paper_count``; tiny: ``count``), toy: the first held-out seeds."""
    if resolved_profile == "toy":
        return list(TOY_SPLIT_SEEDS["held_out"][:count])
    return list(range(paper_count if resolved_profile == "paper" else count))


def chapter_steps(resolved_profile: str, tiny_steps: int = 10, chapter: str | None = None, steps: int | None = None) -> int:
    """Denoising steps: ``steps`` or 50 (paper, as both papers), 25 (toy: what its settings were chosen for), else
    ``tiny_steps``; in tiny at most the ``chapter``'s cap in TINY_STEP_CAPS."""
    steps = steps or {"paper": 50, "toy": TOY_STEPS}.get(resolved_profile, tiny_steps)
    if resolved_profile in ("paper", "toy") or chapter not in TINY_STEP_CAPS:
        return steps
    return min(steps, TINY_STEP_CAPS[chapter])


def generation_inputs(
    records: list[PromptRecord], resolved_profile: str, steps: int
) -> tuple[list[PromptRecord], GenerationOptions]:
    """The records and generator options of a profile: the toy world's chosen settings (toyworld.calibration), batched,
    on toy records; otherwise the papers' defaults with ``steps``, one image per call."""
    if resolved_profile == "toy":
        records, options = toy_generation(records)
        return records, replace(options, steps=steps)
    return records, GenerationOptions(steps=steps)


def explain_inputs(
    resolved_profile: str, prompt: str | None, token_indices: list[int] | None, attention_res: int | None
) -> tuple[str, list[int] | None, AttendExciteConfig]:
    """Chapter 3's prompt, subject tokens and A&E setting: toy: its first held-out object-object prompt, chosen setting."""
    config = AttendExciteConfig()
    if resolved_profile == "toy":  # the toy world's chosen A&E setting, on the prompt's excited tokens (toyworld.calibration)
        (record,), options = toy_generation(book_records(["toy_ae_object_object"], 1))
        if prompt is None:
            prompt, token_indices = record.prompt, token_indices or record.subject_token_indices
        config = options.ae_config
    config = config if attention_res is None else replace(config, attention_res=attention_res)
    return prompt or "a cat and a dog", token_indices, config


def layout_training_setup(
    profile: str, coco_dir: str | None, epochs: int | None, work: Path, layouts_dir: Path
) -> tuple[Path, CocoFilter, TrainConfig, Path, str]:
    """Chapter 1's COCO-format source, filter, training config, checkpoint folder and data name (paper: real COCO)."""
    if profile == "paper":
        if coco_dir is None:
            raise ValueError("The paper profile trains on COCO 2017 annotations: pass -p coco_dir /path/to/coco (see above).")
        source = Path(coco_dir)
        checkpoints = layouts_dir / "checkpoints-paper"  # resumed when the notebook is run again
        return source, CocoFilter(), TrainConfig(epochs=epochs or 100), checkpoints, f"COCO annotations in {source}"
    source = write_synthetic_coco(work / "coco", n_images=400, seed=0)
    config = TrainConfig(epochs=epochs or 15, batch_size=16, encoder_lr=3e-3, head_lr=3e-3, coco_per_epoch=None)
    return source, CocoFilter(caption_relations=True), config, work / "checkpoints", "a generated COCO-format set"


def manifest_provenance(images_dir: Path, set_name: str, methods: Sequence[str], **fields: str) -> Provenance:
    """Provenance of a set's scores: weights and seeds from the manifest lines of its prompts and ``methods``."""
    prompts = {record.prompt for record in load_prompt_set(set_name)}
    lines = [line for line in read_manifest(images_dir) if line.get("prompt") in prompts and line.get("method") in methods]
    return Provenance(
        weights=", ".join(sorted({str(line.get("weights")) for line in lines})) or "unknown (no manifest.jsonl)",
        seeds=",".join(sorted({str(line["seed"]) for line in lines}, key=lambda s: (len(s), s))),
        **fields,
    )


def measured_tables(tables_dir: Path, resolved_profile: str) -> dict[str, pd.DataFrame]:
    """Chapter 4's per-set tables (``<set>_ci.csv``) of this profile only: toy sets on the toy world, paper sets else."""
    toy = resolved_profile == "toy"  # a table left from another profile's run stays out
    return {path.stem.removesuffix("_ci"): pd.read_csv(path) for path in sorted(tables_dir.glob("*_ci.csv"))
            if (path.stem.removesuffix("_ci") in TOY_SETS) == toy}
