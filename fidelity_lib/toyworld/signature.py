"""Attend-and-Excite's signature on the toy world: held-out pairs where the baseline lost an object, chosen by a stated
rule, made again with and without A&E, with each subject token's max attention over the guided steps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fidelity_lib.attend_excite import attend_and_excite_batch
from fidelity_lib.datasets import load_prompt_set
from fidelity_lib.files import read_json_lines
from fidelity_lib.toyworld.calibration import CHOSEN_AE, SAMPLING, subject_indices, toy_ae_config, toy_ae_excite
from fidelity_lib.toyworld.detector import ToyDetector
from fidelity_lib.toyworld.evaluate import score_image
from fidelity_lib.toyworld.experiment import CACHE_NAME, RESULTS_DIR, MissingResultsError
from fidelity_lib.toyworld.scenes import parse_caption

SIGNATURE_SET = "toy_ae_object_object"
RULE = (
    "the first held-out (prompt, seed) pairs of {set_name}, in seed order (then prompt order), whose baseline (sd) image "
    f"lacks a named object (all_present false) and that have an image of the chosen A&E setting ({CHOSEN_AE}); what A&E "
    "made of them plays no part"
)


def headline_rows(folder: Path = RESULTS_DIR) -> pd.DataFrame:
    """The headline's per-image rows (``headline_rows.jsonl``: one per set, setting, prompt and seed)."""
    path = folder / f"headline_{CACHE_NAME}"
    rows = read_json_lines(path)
    if not rows:
        raise MissingResultsError(f"{path} is missing or empty: run python -m fidelity_lib.toyworld.experiment headline")
    return pd.DataFrame(rows)


def lost_object_pairs(
    rows: pd.DataFrame, set_name: str = SIGNATURE_SET, count: int | None = 3, weights: str | None = None
) -> list[tuple[str, int]]:
    """The first ``count`` (None: all) pairs of RULE, from the headline rows (of ``weights`` when given)."""
    rows = rows[(rows["set"] == set_name) & (rows["split"] == "held_out")]
    if weights is not None:
        rows = rows[rows["weights"] == weights]
    lost = rows[(rows["setting"] == "sd") & ~rows["all_present"].astype(bool)][["prompt", "seed"]]
    excited = rows[rows["setting"] == CHOSEN_AE][["prompt", "seed"]].drop_duplicates()
    pairs = lost.drop_duplicates().merge(excited, on=["prompt", "seed"]).sort_values(["seed", "prompt"])
    if pairs.empty:
        raise ValueError(f"No pair fits the rule, {RULE.format(set_name=set_name)}: run toyworld.experiment headline.")
    chosen = pairs if count is None else pairs.head(count)
    return [(str(prompt), int(seed)) for prompt, seed in chosen.itertuples(index=False)]


@dataclass
class SignatureRun:
    """One pair with plain SD and with A&E: images, the detector's verdicts, subjects' max attention per guided step."""

    prompt: str
    seed: int
    tokens: tuple[str, ...]  # the excited subject tokens, "</w>" removed
    steps: list[int]  # the guided step indices
    images: dict[str, Image.Image]  # "SD", "A&E"
    max_attention: dict[str, np.ndarray]  # per method: [guided step, subject], at each step's first A&E forward
    all_present: dict[str, bool]  # the exact detector on these images


def signature_runs(pipe, pairs: Sequence[tuple[str, int]], set_name: str = SIGNATURE_SET) -> list[SignatureRun]:
    """Each pair with plain SD and with the chosen A&E (toy sampling), batched. SD's attention is read by A&E's own forward
    at step size 0 without refinement: the latent never moves, so the image is plain SD's."""
    records = {record.prompt: record for record in load_prompt_set(set_name)}
    prompts, seeds = [prompt for prompt, _ in pairs], [seed for _, seed in pairs]
    indices = [subject_indices(records[prompt], toy_ae_excite()) for prompt in prompts]
    configs = {"SD": replace(toy_ae_config(), scale_factor=0.0, thresholds={}), "A&E": toy_ae_config()}
    results = {label: attend_and_excite_batch(pipe, prompts, indices, seeds=seeds, config=config, **SAMPLING)
               for label, config in configs.items()}
    detector = ToyDetector()
    runs = []
    for k, (prompt, seed) in enumerate(pairs):
        made = {label: results[label][k] for label in configs}
        present = {label: score_image(detector.detect(result.image), parse_caption(prompt))["all_present"]
                   for label, result in made.items()}
        runs.append(SignatureRun(
            prompt, seed, tuple(token.removesuffix("</w>") for token in made["A&E"].tokens), made["A&E"].guided_steps,
            {label: result.image for label, result in made.items()},
            {label: np.array(result.max_attention) for label, result in made.items()}, present,
        ))
    return runs
