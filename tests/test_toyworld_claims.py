"""Small fixed-seed checks of the toy world's claims; the full measurements are in data/toyworld/results/.

Each check runs the shipped weights on a few held-out or development pairs, so it fails when the weights, the
grammar or a method stops doing what the tables say: nouns attend inside their objects, batched A&E is per-image
A&E, and spatial-temporal control moves objects to the side the relation names.
"""

import numpy as np
import pytest

from fidelity_lib.attend_excite import AttendExciteConfig, attend_and_excite, attend_and_excite_batch
from fidelity_lib.datasets import load_prompt_set, split_records
from fidelity_lib.toyworld.calibration import Setting
from fidelity_lib.toyworld.detector import ToyDetector
from fidelity_lib.toyworld.evaluate import SAMPLING, attention_diagnostics, score_image
from fidelity_lib.toyworld.model import toy_pipeline
from fidelity_lib.toyworld.scenes import parse_caption

MIN_SHARE = 0.4  # noun attention inside its object's pixels, 8 held-out pairs (chance: the object's area, ~0.1;
# the ungrounded v1 world gave 0.11 inside the box); headline_attention_summary.csv has 216 pairs


@pytest.fixture(scope="module")
def pipe():
    return toy_pipeline()


def held_out(name: str, count: int) -> list:
    return split_records(load_prompt_set(name), "held_out")[:count]


def test_nouns_attend_inside_their_objects(pipe):
    items = [(record.prompt, seed) for record in held_out("toy_ae_object_object", 4) for seed in (100_000, 100_001)]
    rows = attention_diagnostics(pipe, items)
    shares = rows.groupby("grid")["share_in_mask"].mean()
    print(shares.to_dict())
    assert shares["16x16"] >= MIN_SHARE and shares["8x8"] >= MIN_SHARE


@pytest.mark.slow  # ~6-10 s with its fixture: kept out of the fast loop
def test_batched_attend_and_excite_is_per_image_attend_and_excite_on_the_toy_world(pipe):
    records = held_out("toy_ae_object_object", 4)
    prompts, indices, seeds = [r.prompt for r in records], [r.subject_token_indices for r in records], [100_000 + i for i in range(4)]
    smooth = AttendExciteConfig(max_iter_to_alter=12, thresholds={}, attention_res=8)
    batched = attend_and_excite_batch(pipe, prompts, indices, seeds=seeds, config=smooth, **SAMPLING)
    single = [attend_and_excite(pipe, p, i, seed=s, config=smooth, **SAMPLING) for p, i, s in zip(prompts, indices, seeds)]
    differences = sorted(float(np.abs(a.pixels - b.pixels).max()) for a, b in zip(batched, single))
    # Twelve gradient steps of size ~20 amplify float noise: measured 2e-5 to 2.5e-3 per image on these four
    assert differences[2] <= 1e-3 and differences[-1] <= 1e-2, differences


@pytest.mark.slow
def test_batched_refinement_decisions_are_per_image_ones(pipe):
    # The paper's thresholds make every image refine, a different number of times. Its updates of step size 20
    # amplify float noise: the same image with 1 and with 2 threads differs by ~0.03 (measured), hence the bound.
    records = held_out("toy_ae_object_object", 3)
    prompts, indices, seeds = [r.prompt for r in records], [r.subject_token_indices for r in records], [100_000 + i for i in range(3)]
    batched = attend_and_excite_batch(pipe, prompts, indices, seeds=seeds, config=AttendExciteConfig(), **SAMPLING)
    single = [attend_and_excite(pipe, p, i, seed=s, config=AttendExciteConfig(), **SAMPLING) for p, i, s in zip(prompts, indices, seeds)]
    assert any(a.refinement_iterations for a in single)  # on these weights some images reach the thresholds
    # the first checkpoint sees the same latents up to float noise; later ones may flip where a loss sits at its
    # threshold (measured: one of three images at step 20), and those images then part ways
    assert [a.refinement_iterations.get(0) for a in batched] == [b.refinement_iterations.get(0) for b in single]
    agree = [(a, b) for a, b in zip(batched, single) if a.refinement_iterations == b.refinement_iterations]
    assert len(agree) >= 2 and max(np.abs(a.pixels - b.pixels).max() for a, b in agree) <= 0.1


FIXED_RELATION_PAIRS = [  # the first dev pairs of toy_gpt (seed order) where the baseline gets the relation wrong and
    # ST (CHOSEN_ST) right, in calibrate_rows.jsonl
    ("the red circle is to the right of the blue circle", 0),
    ("the red circle is to the right of the yellow square", 1),
    ("a red triangle to the left of a blue circle", 7),
    ("a red triangle above a yellow square", 10),
]
FIXED_NEGLECT_PAIRS = [  # the first dev pairs of toy_ae_object_object (seed order) where the baseline loses an object and
    # A&E (CHOSEN_AE) not, in calibrate_rows.jsonl
    ("a red circle and a blue triangle", 0),
    ("a green circle and a red square", 9),
    ("a green circle and a blue square", 11),
    ("a blue triangle and a red square", 32),
]


@pytest.mark.slow
def test_spatial_temporal_control_puts_objects_where_the_relation_says_on_fixed_seeds(pipe):
    """A regression check of ST's effect on four fixed dev pairs (picked from the calibration rows, so it proves no
    effect by itself: the 240-pair dev table measures it)."""
    from fidelity_lib.toyworld.calibration import CHOSEN_ST, st_setting
    from fidelity_lib.toyworld.experiment import make_images
    from fidelity_lib.toyworld.model import toy_clip

    records = {r.prompt: r for r in load_prompt_set("toy_gpt")}
    items = [(records[prompt], seed) for prompt, seed in FIXED_RELATION_PAIRS]
    detector = ToyDetector()
    right = {}
    for method in ("sd", "st"):
        setting = st_setting(CHOSEN_ST) if method == "st" else Setting("sd", "sd")
        images = make_images(pipe, setting, items, toy_clip())
        right[method] = sum(score_image(detector.detect(image), parse_caption(r.prompt))["relation_correct"] for (r, _), image in zip(items, images))
    assert right["sd"] == 0 and right["st"] >= 3, right


def test_attend_and_excite_brings_back_neglected_objects_on_fixed_seeds(pipe):
    """A regression check of A&E's effect on four fixed dev pairs (picked from the calibration rows: 14 of 216 dev pairs
    were repaired and 4 broken, so it proves no effect by itself; the dev table measures it)."""
    from fidelity_lib.toyworld.calibration import CHOSEN_AE, ae_setting
    from fidelity_lib.toyworld.experiment import make_images

    records = {r.prompt: r for r in load_prompt_set("toy_ae_object_object")}
    items = [(records[prompt], seed) for prompt, seed in FIXED_NEGLECT_PAIRS]
    detector = ToyDetector()
    present = {}
    for name, setting in (("sd", Setting("sd", "sd")), ("ae", ae_setting(CHOSEN_AE))):
        images = make_images(pipe, setting, items, None)
        present[name] = sum(score_image(detector.detect(image), parse_caption(r.prompt))["all_present"] for (r, _), image in zip(items, images))
    assert present["sd"] == 0 and present["ae"] >= 3, present
