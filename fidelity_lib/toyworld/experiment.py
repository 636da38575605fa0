"""The toy world's measurements: method settings swept on the development split, and the headline on the held-out one.

    python -m fidelity_lib.toyworld.experiment calibrate   # dev split: every candidate setting of A&E and ST
    python -m fidelity_lib.toyworld.experiment headline    # held-out split: sd, ae, st, st+ae on every toy set
    python -m fidelity_lib.toyworld.experiment attention   # held-out split: where the nouns attend (baseline)
    python -m fidelity_lib.toyworld.experiment metric-models   # the detector, toy CLIP and toy BLIP on real scenes

Every image is scored by the exact detector as soon as it is made and appended to a JSON-lines cache (one line per
set, method, setting, prompt and seed), so a killed run resumes where it stopped and loses at most one batch.
The tables are written from the cache, with Wilson 95% intervals and paired-bootstrap 95% intervals against the
baseline on the same (prompt, seed) pairs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from fidelity_lib.attend_excite import attend_and_excite_batch
from fidelity_lib.datasets import TOY_SPLIT_SEEDS, PromptRecord, load_prompt_set, split_records
from fidelity_lib.files import append_json_lines, read_json_lines
from fidelity_lib.generate import METHODS
from fidelity_lib.report import REPO_ROOT, Provenance, save_with_provenance
from fidelity_lib.spacetime import spacetime_generate
from fidelity_lib.toyworld.calibration import (
    Job, Plan, Setting, calibration_plan, headline_plan, stated_layout, subject_indices,
)
from fidelity_lib.toyworld.detector import ToyDetector
from fidelity_lib.toyworld.evaluate import (
    SAMPLING, attention_diagnostics, paired_difference, rate_table, score_image,
)
from fidelity_lib.toyworld.captioner import caption_accuracy, toy_blip
from fidelity_lib.toyworld.model import toy_clip, toy_pipeline, weights_id
from fidelity_lib.toyworld.scenes import generate_scenes, parse_caption
from fidelity_lib.toyworld.train import VALIDATION_SEED

RESULTS_DIR = REPO_ROOT / "data" / "toyworld" / "results"
CACHE_NAME = "rows.jsonl"
TOY_NOTE = "toy-world numbers (coloured shapes, a 1.1M-parameter UNet): not Stable Diffusion results"


def pairs_for(set_name: str, split: str, n_pairs: int) -> list[tuple[PromptRecord, int]]:
    """At least ``n_pairs`` (prompt, seed) pairs of a split: every prompt of the split in turn, each pair with a seed of
    its own (the split's seeds in order). Pairs that shared a few seeds across prompts would share their starting
    noises, and a handful of noises then sways a whole set's rate beyond what a CI over pairs admits."""
    records = split_records(load_prompt_set(set_name), split)
    seeds = TOY_SPLIT_SEEDS[split]
    rounds = math.ceil(n_pairs / len(records))
    return [(record, seeds[k * len(records) + i]) for k in range(rounds) for i, record in enumerate(records)]


def make_images(pipe, setting: Setting, items: Sequence[tuple[PromptRecord, int]], clip_model) -> list:
    """The images of a batch of (record, seed) items with one setting (sd and ae batched, st one by one)."""
    prompts, seeds = [r.prompt for r, _ in items], [s for _, s in items]
    if setting.method == "sd":
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        return pipe(prompts, generator=generators, **SAMPLING).images
    if setting.method == "ae":
        indices = [subject_indices(record, setting.excite) for record, _ in items]
        return [r.image for r in attend_and_excite_batch(pipe, prompts, indices, seeds=seeds, config=setting.ae, **SAMPLING)]
    config = replace(setting.st, attend_excite=setting.ae) if setting.ae is not None else setting.st
    return [
        spacetime_generate(
            pipe, record.prompt, stated_layout(record.prompt, setting.layout_gap), seed=seed, config=config,
            clip_model=clip_model, method=setting.method, token_indices=subject_indices(record, setting.excite),
        ).image
        for record, seed in items
    ]


def run(pipe, set_name: str, setting: Setting, items, cache: Path, clip_model, batch_size: int, weights: str) -> None:
    """Make and score the items of one set and setting that the cache does not hold yet."""
    done = {(r["set"], r["setting"], r["prompt"], r["seed"]) for r in read_json_lines(cache) if r.get("weights") == weights}
    todo = [(record, seed) for record, seed in items if (set_name, setting.name, record.prompt, seed) not in done]
    detector = ToyDetector()
    step = batch_size if setting.method in ("sd", "ae") else 1
    with tqdm(total=len(items), initial=len(items) - len(todo), desc=f"{set_name} {setting.name}", unit="img") as bar:
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            began = time.perf_counter()
            images = make_images(pipe, setting, chunk, clip_model)
            seconds = (time.perf_counter() - began) / len(chunk)
            rows = []
            for (record, seed), image in zip(chunk, images):
                scores = score_image(detector.detect(image), parse_caption(record.prompt))
                row = {"set": set_name, "setting": setting.name, "method": setting.method, "prompt": record.prompt,
                       "seed": seed, "split": record.extra["split"], "weights": weights, "seconds": round(seconds, 4)}
                rows.append(row | scores)
            append_json_lines(cache, rows)
            bar.update(len(chunk))


METRICS = ("all_present", "all_objects", "relation_correct")


def summarise(rows: pd.DataFrame, baseline_setting: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rates with Wilson intervals per set, setting and metric, and paired differences against ``baseline_setting``."""
    rates, differences = [], []
    for metric in (name for name in METRICS if name in rows):
        rated = rows.dropna(subset=[metric])
        if rated.empty:
            continue
        rates.append(rate_table(rated, metric, ["set", "setting", "method"]))
        for (set_name, setting), group in rated.groupby(["set", "setting"], sort=False):
            base = rated[(rated["set"] == set_name) & (rated["setting"] == baseline_setting)]
            if setting == baseline_setting or base.empty:
                continue
            difference = paired_difference(group, base, metric)
            differences.append({"set": set_name, "setting": setting, "method": group["method"].iloc[0]} | difference)
    columns = ["set", "setting", "method", "metric", "n_pairs", "difference", "ci_low", "ci_high", "repairs", "breakages"]
    return pd.concat(rates, ignore_index=True), pd.DataFrame(differences, columns=columns)


def write_results(name: str, table: pd.DataFrame, provenance: Provenance, folder: Path) -> Path:
    """``folder/<name>.csv`` and its provenance record, atomically; left as they are when they hold these numbers."""
    path = folder / f"{name}.csv"
    save_with_provenance({path: table.to_csv(index=False).encode()}, provenance, name)
    return path


def execute(jobs: list[Job], split: str, name: str, folder: Path, batch_size: int = 32) -> None:
    """Make and score (resumably) every pair of ``jobs`` that ``folder/<name>_rows.jsonl`` does not hold yet."""
    folder.mkdir(parents=True, exist_ok=True)
    pipe = toy_pipeline()
    clip_model = toy_clip()
    cache = folder / f"{name}_{CACHE_NAME}"
    for job in jobs:
        items = pairs_for(job.set_name, split, job.n_pairs)
        run(pipe, job.set_name, job.setting, items, cache, clip_model, batch_size, pipe.weights_id)


def in_plan_order(table: pd.DataFrame, plan: Plan) -> pd.DataFrame:
    """The table's rows by set (in the plan's order), method (in ``generate.METHODS``' order, as manifests are),
    setting (in the plan's order) and metric, whatever order the cache was filled in, so a rerun that makes the jobs
    in another order writes the same tables."""
    setting_rank = {setting: k for k, setting in enumerate(dict.fromkeys(job.setting.name for job in plan.jobs))}
    key = pd.DataFrame({"set": table["set"].map(plan.sets.index), "method": table["method"].map(list(METHODS).index),
                        "setting": table["setting"].map(setting_rank), "metric": table["metric"].map(METRICS.index)})
    return table.loc[key.sort_values(list(key.columns), kind="stable").index].reset_index(drop=True)


def write_tables(plan: Plan, name: str, folder: Path, weights: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rate, paired-difference and settings tables of the plan's jobs that the cache holds whole: a job still
    running (or stopped part-way) enters the tables only once every one of its (prompt, seed) pairs is made."""
    cache = folder / f"{name}_{CACHE_NAME}"
    made: dict[tuple[str, str], set] = {}
    cached = [r for r in read_json_lines(cache) if r.get("weights") == weights and r["split"] == plan.split]
    for r in cached:
        made.setdefault((r["set"], r["setting"]), set()).add((r["prompt"], r["seed"]))
    complete = {
        (job.set_name, job.setting.name) for job in plan.jobs
        if {(record.prompt, seed) for record, seed in pairs_for(job.set_name, plan.split, job.n_pairs)} <= made.get((job.set_name, job.setting.name), set())
    }
    rows = pd.DataFrame([r for r in cached if (r["set"], r["setting"]) in complete])
    rates, paired = (in_plan_order(table, plan) for table in summarise(rows, "sd"))
    seeds = TOY_SPLIT_SEEDS[plan.split]
    counts = rows.groupby(["set", "setting"]).size()
    provenance = Provenance(
        profile="toy", weights=weights, seeds=f"{plan.split} split, seeds from {seeds.start}", detector=ToyDetector.name,
        notes=f"{TOY_NOTE}; {counts.min()}-{counts.max()} (prompt, seed) pairs per set and setting",
    )
    settings = pd.DataFrame([job.setting.describe() for job in plan.jobs]).drop_duplicates("setting")
    write_results(f"{name}_rates", rates, provenance, folder)
    write_results(f"{name}_paired", paired, provenance, folder)
    write_results(f"{name}_settings", settings, provenance, folder)
    return rates, paired


ATTENTION_SET = "toy_ae_object_object"
ATTENTION_PAIRS = 216


def write_attention_diagnostics(folder: Path, n_pairs: int, split: str = "held_out") -> pd.DataFrame:
    """Noun attention of the baseline on held-out two-object pairs: per-image rows and a summary per grid."""
    pipe = toy_pipeline()
    items = [(record.prompt, seed) for record, seed in pairs_for(ATTENTION_SET, split, n_pairs)]
    rows = attention_diagnostics(pipe, items)
    summary = []
    for grid, group in rows.groupby("grid", sort=False):
        shares = group["share_in_mask"].dropna()
        half = 1.96 * shares.std(ddof=1) / math.sqrt(len(shares))
        summary.append({"set": ATTENTION_SET, "grid": grid, "n_nouns": len(group), "n_found": len(shares),
                        "share_in_mask": shares.mean(), "ci_low": shares.mean() - half, "ci_high": shares.mean() + half,
                        "max_attention": group["max_attention"].mean(), "uniform_max": 1 / pipe.tokenizer.model_max_length})
    summary = pd.DataFrame(summary)
    provenance = Provenance(
        profile="toy", weights=pipe.weights_id, seeds=f"{split} split, seeds from {TOY_SPLIT_SEEDS[split].start}",
        detector=ToyDetector.name,
        notes=f"{TOY_NOTE}; baseline samples, last step, conditional branch, head and layer mean per grid; "
              "share = noun attention inside the detected object's pixels / all its attention; 95% normal CI over nouns",
    )
    write_results("headline_attention", rows, provenance, folder)
    write_results("headline_attention_summary", summary, provenance, folder)
    return summary


VALIDATION_SCENES = 500


def write_metric_models(folder: Path, seed: int = VALIDATION_SEED) -> pd.DataFrame:
    """How well the toy metric models read held-out real scenes: detector, toy CLIP (one object, top-1) and toy BLIP."""
    scenes = generate_scenes(VALIDATION_SCENES, seed)
    detector = ToyDetector()
    exact = sum(sorted(d.label for d in detector.detect(s.pil())) == sorted(o.name for o in s.objects) for s in scenes)
    clip = toy_clip()
    model, preprocess, tokenizer = clip.model, clip.preprocess, clip.tokenizer
    single = [s for s in scenes if len(s.objects) == 1]
    names = sorted({f"a {o.name}" for s in single for o in s.objects})
    with torch.no_grad():
        images = model.encode_image(torch.stack([preprocess(s.pil()) for s in single]))
        best = (images @ model.encode_text(tokenizer(names)).T).argmax(dim=1)
    clip_right = sum(names[i] == f"a {s.objects[0].name}" for i, s in zip(best.tolist(), single))
    captioner = toy_blip()
    blip = caption_accuracy(captioner, scenes)
    rows = pd.DataFrame([
        {"model": ToyDetector.name, "task": "every object's colour and shape, real scenes", "n": len(scenes), "accuracy": exact / len(scenes)},
        {"model": "toy CLIP", "task": f"top-1 of the {len(names)} one-object captions", "n": len(single), "accuracy": clip_right / len(single)},
        {"model": captioner.name, "task": "caption names exactly the scene's objects", "n": len(scenes), "accuracy": blip["names_the_objects"]},
        {"model": captioner.name, "task": "caption equals the scene's own caption", "n": len(scenes), "accuracy": blip["exact_caption"]},
    ])
    provenance = Provenance(profile="toy", weights=weights_id(), seeds=f"{VALIDATION_SCENES} real scenes from seed {seed}",
                            detector=ToyDetector.name, notes=TOY_NOTE)
    write_results("metric_models", rows, provenance, folder)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("calibrate", "headline", "attention", "metric-models"))
    parser.add_argument("--pairs", type=int, help="(prompt, seed) pairs per set and setting (default: the plan's)")
    parser.add_argument("--sets", help="comma-separated toy sets to make images for (default: every set the plan names); "
                        "the tables always take every job of the plan that the cache holds whole")
    parser.add_argument("--methods", help="comma-separated methods to make images for (sd, ae, st, st+ae; default: all the plan's)")
    parser.add_argument("--tables-only", action="store_true", help="make no image: write the tables from the cache")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.what == "metric-models":
        print(write_metric_models(args.out).to_string(index=False))
        return 0
    if args.what == "attention":
        print(write_attention_diagnostics(args.out, ATTENTION_PAIRS).to_string(index=False))
        return 0
    plan = calibration_plan() if args.what == "calibrate" else headline_plan()
    if args.pairs:
        plan.jobs = [Job(job.set_name, job.setting, args.pairs) for job in plan.jobs]
    jobs = plan.jobs
    if args.sets:
        unknown = set(args.sets.split(",")) - set(plan.sets)
        if unknown:
            parser.error(f"unknown sets {sorted(unknown)}: this plan has {', '.join(plan.sets)}")
        jobs = [job for job in jobs if job.set_name in args.sets.split(",")]
    if args.methods:
        methods = sorted({job.setting.method for job in plan.jobs})
        unknown = set(args.methods.split(",")) - set(methods)
        if unknown:
            parser.error(f"unknown methods {sorted(unknown)}: this plan runs {', '.join(methods)}")
        jobs = [job for job in jobs if job.setting.method in args.methods.split(",")]
    if not args.tables_only:
        execute(jobs, plan.split, args.what, args.out, args.batch_size)
    rates, paired = write_tables(plan, args.what, args.out, weights_id())  # every job of the plan made whole, not only the filtered ones
    print(rates.to_string(index=False))
    print(paired.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())


class MissingResultsError(FileNotFoundError):
    """A results table that the experiment has not written yet."""


def read_results(name: str, folder: Path = RESULTS_DIR) -> tuple[pd.DataFrame, dict]:
    """A results table written by this module and its provenance record."""
    path = folder / f"{name}.csv"
    provenance_path = path.with_suffix(".provenance.json")
    if not path.exists() or not provenance_path.exists():
        raise MissingResultsError(
            f"{path} (or its provenance) is missing: run python -m fidelity_lib.toyworld.experiment "
            f"{'headline' if name.startswith('headline') else 'calibrate'}"
        )
    return pd.read_csv(path), json.loads(provenance_path.read_text(encoding="utf-8"))


METRIC_WORDS = {  # presence counts an object by its colour (or shape, where no colour is named); colour+shape asks for both
    "all_present": "presence of every object", "all_objects": "colour+shape accuracy", "relation_correct": "relation accuracy",
}


def points_with_ci(row: dict) -> str:
    """A paired difference and its 95% interval in percentage points: '+3.4 [+0.9, +5.9]'."""
    return f"{100 * row['difference']:+.1f} [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}]"


def verdict(row: dict) -> str:
    """One measured sentence for a paired difference: which way it went and whether its 95% interval excludes zero."""
    interval = f"{points_with_ci(row)} points, n = {row['n_pairs']} pairs"
    if row["ci_low"] > 0:
        word = "raises"
    elif row["ci_high"] < 0:
        word = "lowers"
    else:
        return f"{row['method']} does not change {METRIC_WORDS[row['metric']]} on {row['set']} measurably ({interval})."
    return f"{row['method']} {word} {METRIC_WORDS[row['metric']]} on {row['set']} ({interval}; the interval excludes zero)."
