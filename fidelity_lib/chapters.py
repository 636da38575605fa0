"""What the chapters run in each resolved profile: seeds, steps and generation settings.

Paper runs the papers' sets with their defaults; toy runs each set's toy counterpart (``datasets.set_for_profile``) on
held-out prompts and seeds with the settings chosen on the toy world's development split; tiny checks the plumbing.
"""

from __future__ import annotations

from dataclasses import replace

from fidelity_lib.datasets import TOY_SPLIT_SEEDS, PromptRecord
from fidelity_lib.generate import GenerationOptions
from fidelity_lib.toyworld.calibration import STEPS as TOY_STEPS
from fidelity_lib.toyworld.calibration import toy_generation


def chapter_seeds(resolved_profile: str, count: int, paper_count: int = 64) -> list[int]:
    """The seeds a chapter generates: 0.. (paper: ``paper_count``; tiny: ``count``), toy: the first held-out seeds."""
    if resolved_profile == "toy":
        return list(TOY_SPLIT_SEEDS["held_out"][:count])
    return list(range(paper_count if resolved_profile == "paper" else count))


def chapter_steps(resolved_profile: str, tiny_steps: int = 10) -> int:
    """Denoising steps: 50 (paper, as both papers), 25 (toy: what its settings were chosen for), else ``tiny_steps``."""
    return {"paper": 50, "toy": TOY_STEPS}.get(resolved_profile, tiny_steps)


def generation_inputs(
    records: list[PromptRecord], resolved_profile: str, steps: int
) -> tuple[list[PromptRecord], GenerationOptions]:
    """The records and generator options of a profile: the toy world's chosen settings (toyworld.calibration), batched,
    on toy records; otherwise the papers' defaults with ``steps``, one image per call."""
    if resolved_profile == "toy":
        records, options = toy_generation(records)
        return records, replace(options, steps=steps)
    return records, GenerationOptions(steps=steps)
