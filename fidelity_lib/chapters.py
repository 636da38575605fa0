"""What the chapters run in each resolved profile: seeds, steps, generation settings, training data and provenance.

Paper runs the papers' sets with their defaults; toy runs each set's toy counterpart (``datasets.set_for_profile``) on
held-out prompts and seeds with the settings chosen on the toy world's development split; tiny checks the plumbing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from fidelity_lib.attend_excite import AttendExciteConfig
from fidelity_lib.datasets import AE_SETS, ST_SETS, TOY_AE_SETS, TOY_SETS, TOY_SPLIT_SEEDS, PromptRecord, load_prompt_set
from fidelity_lib.generate import GenerationOptions, read_manifest
from fidelity_lib.layout import (
    CocoFilter, LayoutExample, LayoutPredictor, TrainConfig, gpt_training_records, load_layouts, write_synthetic_coco,
)
from fidelity_lib.report import Provenance
from fidelity_lib.toyworld.calibration import STEPS as TOY_STEPS
from fidelity_lib.toyworld.calibration import subject_indices, toy_ae_config, toy_ae_excite, toy_generation
from fidelity_lib.toyworld.experiment import METRIC_WORDS, RESULTS_DIR, points_with_ci
from fidelity_lib.toyworld.model import weights_id
from fidelity_lib.toyworld.signature import SIGNATURE_SET, headline_rows, lost_object_pairs

# At most this many steps for a chapter's part in the tiny profile, whatever was asked: each spatial-temporal image
# costs about ten plain samplings, so chapter 2's spatial-temporal part runs at most 4.
TINY_STEP_CAPS = {"02_generate_st": 4}


@dataclass(frozen=True)
class PaperScale:
    """What the paper book makes at one scale: prompts and seeds per set, denoising steps, image size, layout epochs."""

    name: str
    ae_prompts: int | None  # prompts per A&E set; None: all (66 + 144 + 66)
    ae_seeds: tuple[int, ...]  # A&E: run.py --seeds, 64 seeds per prompt in the paper
    st_prompts: int | None  # prompts per ST set (gpt, mscoco, vsr); None: all 500
    st_seeds: tuple[int, ...]  # ST: txt2img-gpt.py --seed 1, one image per prompt
    steps: int  # both papers: 50 PNDM steps
    image_size: int | None  # None: the model's default (512 on SD v1.4)
    layout_epochs: int  # the official LT/ EPOCHS = 100

    def describe(self) -> str:
        """One line for every artefact's provenance: what this scale makes, and what it cuts from the papers' runs."""
        cuts = [] if self.name == "paper" else [f"{self.steps} of 50 steps", f"{self.image_size or 'default'} px",
                                                f"{self.layout_epochs} of 100 layout epochs"]
        counts = (f"A&E sets: {self.ae_prompts or 'all'} prompts x seeds {seed_text(self.ae_seeds)}; "
                  f"gpt/mscoco/vsr: {self.st_prompts or 'all'} prompts x seed {seed_text(self.st_seeds)}")
        return f"scale {self.name} ({counts}" + (f"; cut: {', '.join(cuts)})" if cuts else ")")


def seed_text(seeds: Sequence[int]) -> str:
    """'0-63', or '1', or '0,5'."""
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


PAPER_SCALES = {
    "paper": PaperScale("paper", None, tuple(range(64)), None, (1,), 50, None, 100),
    # a CPU rehearsal on random-weight stand-ins (make rehearse): every chapter, set and method, a few images each
    "quick": PaperScale("quick", 2, (0, 1), 2, (1,), 2, 256, 1),
}


def paper_scale(name: str) -> PaperScale:
    """PAPER_SCALES[name], or a ValueError naming the scales."""
    if name not in PAPER_SCALES:
        raise ValueError(f"Unknown scale {name!r}: choose one of {', '.join(PAPER_SCALES)}.")
    return PAPER_SCALES[name]


@dataclass(frozen=True)
class GenerationPart:
    """Some sets' first ``limit`` prompts, made with ``methods`` from ``seeds``."""

    sets: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    limit: int | None


METHODS = ("sd", "ae", "st", "st+ae")


def paper_parts(scale: PaperScale) -> list[GenerationPart]:
    """The paper book's images: the A&E sets with A&E's seeds, gpt/mscoco/vsr with ST's seed, every method on each."""
    return [
        GenerationPart(tuple(AE_SETS), METHODS, scale.ae_seeds, scale.ae_prompts),
        GenerationPart(ST_SETS, METHODS, scale.st_seeds, scale.st_prompts),
    ]


def job_size_table(scale: PaperScale) -> str:
    """A markdown table of what chapter 2 makes at ``scale``: per paper set its prompts, seeds and images per method."""
    lines = ["| set | prompts | seeds | images per method | images, 4 methods |", "|---|---|---|---|---|"]
    total = 0
    for part in paper_parts(scale):
        for name in part.sets:
            prompts = len(load_prompt_set(name)[: part.limit])
            images = prompts * len(part.seeds)
            total += images * len(part.methods)
            lines.append(f"| {name} | {prompts} | {seed_text(part.seeds)} | {images:,} | {images * len(part.methods):,} |")
    lines.append(f"| all | | | | {total:,} |")
    return "\n".join(lines)


def set_part(set_name: str, scale: PaperScale) -> GenerationPart:
    """The part of the paper book that makes ``set_name``'s images."""
    for part in paper_parts(scale):
        if set_name in part.sets:
            return part
    raise ValueError(f"{set_name!r} is in no paper-book part: the paper book makes {', '.join((*AE_SETS, *ST_SETS))}.")


def generation_parts(
    resolved_profile: str, scale: PaperScale, seeds: Sequence[int] | None = None, limit: int | None = None
) -> list[GenerationPart]:
    """Chapter 2's images. Paper: paper_parts(scale). Toy: its A&E sets with sd and ae on 4 held-out seeds and st, st+ae
    on 2; its relation set with sd, st and st+ae on 4 sentences and 2 seeds. Tiny: one prompt per A&E set, two relation
    sentences, one seed for ST. ``seeds`` and ``limit`` replace every part's own."""
    if resolved_profile == "paper":
        parts = paper_parts(scale)
    else:
        toy = resolved_profile == "toy"
        own = tuple(chapter_seeds(resolved_profile, 4 if toy else 2))
        ae_sets = TOY_AE_SETS if toy else tuple(AE_SETS)
        relation = "toy_gpt" if toy else "gpt"
        st_seeds = own[:2] if toy else own[:1]
        parts = [GenerationPart(ae_sets, ("sd", "ae"), own, 2 if toy else 1)]
        parts += [GenerationPart(ae_sets, ("st", "st+ae"), own[:2], 2)] if toy else []
        parts += [GenerationPart((relation,), ("sd", "st", "st+ae"), st_seeds, 4 if toy else 2)]
    return [replace(part, seeds=tuple(seeds or part.seeds), limit=limit or part.limit) for part in parts]


def eval_set_images(
    set_name: str, resolved_profile: str, scale: PaperScale, limit: int | None, seeds: Sequence[int] | None
) -> tuple[int | None, Sequence[int]]:
    """Chapter 4's (prompt limit, seeds) for a set: paper: ``limit``/``seeds`` or its part of chapter 2 at ``scale``;
    else ``limit`` (default 3) and ``seeds``."""
    if resolved_profile != "paper":
        return limit or 3, seeds
    part = set_part(set_name, scale)
    return limit or part.limit, seeds or part.seeds


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
    records: list[PromptRecord], resolved_profile: str, steps: int, image_size: int | None = None,
    layouts_dir: Path | None = None,
) -> tuple[list[PromptRecord], GenerationOptions]:
    """The records and generator options of a profile: the toy world's chosen settings (toyworld.calibration), batched,
    on toy records; otherwise the papers' defaults with ``steps`` and ``image_size``, one image per call, and ST's layouts
    and predictor from ``layouts_dir`` (chapter 1's output of this run) where it has them."""
    if resolved_profile == "toy":
        records, options = toy_generation(records)
        return records, replace(options, steps=steps)
    options = GenerationOptions(steps=steps, image_size=image_size)
    if layouts_dir is None:
        return records, options
    layouts = {}
    for set_name in dict.fromkeys(record.set_name for record in records):
        if (layouts_dir / f"{set_name}.json").is_file():
            written_for, set_layouts = load_layouts(set_name, layouts_dir)
            layouts |= set_layouts if written_for == resolved_profile else {}
    predictor_dir = layouts_dir / f"predictor-{resolved_profile}"
    predictor = LayoutPredictor.load(predictor_dir) if predictor_dir.is_dir() else None
    return records, replace(options, layouts=layouts, layout_predictor=predictor)


def explain_inputs(
    resolved_profile: str, prompt: str | None, token_indices: list[int] | None, attention_res: int | None,
    seed: int | None = None,
) -> tuple[str, list[int] | None, AttendExciteConfig, int]:
    """Chapter 3's prompt, subject tokens, A&E setting and seed. Toy: the chosen setting; ``prompt`` None: the first pair
    of the A&E signature rule (toyworld.signature.lost_object_pairs, a held-out object-object pair whose baseline lost
    an object), its seed unless ``seed`` is given; a given prompt gets the first held-out seed. Else "a cat and a dog",
    seed 0."""
    config = AttendExciteConfig()
    if resolved_profile == "toy":  # the toy world's chosen A&E setting, on the prompt's excited tokens (toyworld.calibration)
        if prompt is None:
            ((prompt, rule_seed),) = lost_object_pairs(headline_rows(), count=1, weights=weights_id())
            record = next(record for record in load_prompt_set(SIGNATURE_SET) if record.prompt == prompt)
            token_indices = token_indices or subject_indices(record, toy_ae_excite())
            seed = rule_seed if seed is None else seed
        config = toy_ae_config()
    seed = seed if seed is not None else chapter_seeds(resolved_profile, 1)[0]
    config = config if attention_res is None else replace(config, attention_res=attention_res)
    return prompt or "a cat and a dog", token_indices, config, seed


def layout_training_setup(
    profile: str, coco_dir: str | None, epochs: int | None, work: Path, layouts_dir: Path
) -> tuple[Path, CocoFilter, TrainConfig, Path, str, list[LayoutExample]]:
    """Chapter 1's COCO-format source, filter, training config, checkpoint folder, data name and GPT-style training
    examples. Paper: real COCO + the official 2000 gpt-3.pkl sentences (gpt_training_records); smoke: a generated
    COCO-format set + the first 400 of them. Neither trains on an evaluation set (gpt.txt is held out whole)."""
    if profile == "paper":
        if coco_dir is None:
            raise ValueError("The paper profile trains on COCO 2017 annotations: pass -p coco_dir /path/to/coco (see above).")
        source = Path(coco_dir)
        checkpoints = layouts_dir / "checkpoints-paper"  # resumed when the notebook is run again
        data_name = f"COCO annotations in {source} + the 2000 gpt-3.pkl sentences"
        return source, CocoFilter(), TrainConfig(epochs=epochs or 100), checkpoints, data_name, gpt_training_records()
    source = write_synthetic_coco(work / "coco", n_images=400, seed=0)
    config = TrainConfig(epochs=epochs or 15, batch_size=16, encoder_lr=3e-3, head_lr=3e-3, coco_per_epoch=None)
    gpt_train = gpt_training_records()[:400]  # as many GPT items as the generated set has images: seconds per epoch
    data_name = "a generated COCO-format set + 400 gpt-3.pkl sentences"
    return source, CocoFilter(caption_relations=True), config, work / "checkpoints", data_name, gpt_train


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


def toy_headline_comparisons(set_names: Sequence[str], folder: Path = RESULTS_DIR) -> tuple[pd.DataFrame, Provenance]:
    """The held-out headline's paired differences against SD for these toy sets (chapter 0's run: hundreds of
    (prompt, seed) pairs, the exact detector), in points with their 95% bootstrap CI, repairs and breakages."""
    paired = pd.read_csv(folder / "headline_paired.csv")
    paired = paired[paired["set"].isin(set_names)]
    table = pd.DataFrame({
        "set": paired["set"], "method": paired["method"], "metric": paired["metric"].map(METRIC_WORDS),
        "pairs": paired["n_pairs"],
        "difference vs sd, points [95% CI]": [points_with_ci(row) for row in paired.to_dict("records")],
        "repaired": paired["repairs"], "broken": paired["breakages"],
    }).sort_values(["set", "metric", "method"], kind="stable")
    record = json.loads((folder / "headline_paired.provenance.json").read_text())
    return table.reset_index(drop=True), Provenance.from_record(record)
