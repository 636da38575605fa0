"""The toy-world experiment: its pairs, its resumable cache, its tables and its sentences."""

import json

import pandas as pd
import pytest
from PIL import Image

from fidelity_lib.datasets import TOY_SPLIT_SEEDS
from fidelity_lib.files import read_json_lines
from fidelity_lib.toyworld import experiment
from fidelity_lib.toyworld.calibration import calibration_plan, headline_plan
from fidelity_lib.toyworld.calibration import Setting, subject_indices
from fidelity_lib.toyworld.experiment import pairs_for, summarise, verdict


def test_pairs_cover_every_prompt_of_the_split_with_its_own_seeds():
    pairs = pairs_for("toy_ae_object_object", "held_out", 600)
    assert len(pairs) >= 600 and len(pairs) < 600 + 54
    assert {record.extra["split"] for record, _ in pairs} == {"held_out"}
    assert all(seed in TOY_SPLIT_SEEDS["held_out"] for _, seed in pairs)
    assert len({seed for _, seed in pairs}) == len(pairs)  # no two pairs share a starting noise
    assert pairs_for("toy_ae_object_object", "held_out", 100) == pairs[:108]  # more pairs extend, never reshuffle
    dev_prompts = {record.prompt for record, _ in pairs_for("toy_ae_object_object", "dev", 54)}
    assert not dev_prompts & {record.prompt for record, _ in pairs}


def test_colours_and_nouns_are_the_mentions_tokens():
    record = pairs_for("toy_ae_shape_object", "dev", 1)[0][0]  # e.g. "a circle and a red square"
    both = subject_indices(record, "colours-and-nouns")
    assert set(record.subject_token_indices) < set(both) and len(both) == len(record.subject_token_indices) + 1


def test_plans_tune_on_dev_and_report_on_held_out_with_a_baseline_for_every_set():
    calibration, headline = calibration_plan(), headline_plan()
    assert calibration.split == "dev" and headline.split == "held_out"
    for plan in (calibration, headline):
        for name in plan.sets:
            assert any(job.set_name == name and job.setting.method == "sd" for job in plan.jobs)
    assert {job.setting.method for job in headline.jobs} == {"sd", "ae", "st", "st+ae"}
    every_set = {"toy_ae_shape_shape", "toy_ae_shape_object", "toy_ae_object_object", "toy_gpt", "toy_vsr", "toy_mscoco"}
    for name in every_set:
        methods = {job.setting.method: job.n_pairs for job in headline.jobs if job.set_name == name}
        assert set(methods) == {"sd", "ae", "st", "st+ae"}, name
        assert min(methods.values()) >= (600 if name in ("toy_ae_object_object", "toy_gpt") else 300), name


def fake_rows(successes_sd: list[bool], successes_ae: list[bool]) -> pd.DataFrame:
    rows = []
    for setting, values in (("sd", successes_sd), ("ae-x", successes_ae)):
        for seed, value in enumerate(values):
            rows.append({"set": "toy_ae_object_object", "setting": setting, "method": setting.split("-")[0], "prompt": "p",
                         "seed": seed, "all_present": value, "relation_correct": None})
    return pd.DataFrame(rows)


def test_summaries_pair_each_image_with_its_baseline_and_sentences_follow_the_interval():
    rates, paired = summarise(fake_rows([False] * 50 + [True] * 50, [True] * 90 + [False] * 10), "sd")
    assert set(rates["setting"]) == {"sd", "ae-x"} and (rates["metric"] == "all_present").all()
    row = paired.iloc[0].to_dict()
    assert row["n_pairs"] == 100 and row["difference"] == pytest.approx(0.4)
    assert row["ci_low"] > 0 and "raises" in verdict(row) and "excludes zero" in verdict(row)
    _, flat = summarise(fake_rows([True, False] * 50, [False, True] * 50), "sd")
    assert "does not change" in verdict(flat.iloc[0].to_dict())


def test_a_run_resumes_from_its_cache_and_redoes_only_what_a_kill_cut(tmp_path, monkeypatch):
    made = []

    def fake_images(pipe, setting, items, clip_model):
        made.append(len(items))
        return [Image.new("RGB", (32, 32), (210, 210, 210)) for _ in items]

    monkeypatch.setattr(experiment, "make_images", fake_images)
    cache = tmp_path / "rows.jsonl"
    items = pairs_for("toy_ae_object_object", "dev", 54)[:5]
    experiment.run(None, "toy_ae_object_object", Setting("sd", "sd"), items, cache, None, 2, "toyworld@x")
    assert made == [2, 2, 1] and len(read_json_lines(cache)) == 5
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # killed while writing the fourth row
    made.clear()
    experiment.run(None, "toy_ae_object_object", Setting("sd", "sd"), items, cache, None, 2, "toyworld@x")
    assert made == [2] and len(read_json_lines(cache)) == 5
    assert json.loads(cache.read_text().splitlines()[-1])["all_present"] is False  # a blank image has no object


def test_the_chosen_settings_are_the_dev_splits_best():
    from fidelity_lib.toyworld.calibration import CHOSEN_AE, CHOSEN_ST, best_candidate
    from fidelity_lib.toyworld.experiment import read_results

    from fidelity_lib.toyworld.model import weights_id

    paired, provenance = read_results("calibrate_paired")
    assert provenance["seeds"].startswith("dev split") and provenance["weights"] == weights_id()
    assert best_candidate(paired, "ae") == CHOSEN_AE and best_candidate(paired, "st") == CHOSEN_ST


def test_chapters_run_toy_records_with_the_toy_worlds_chosen_settings():
    from fidelity_lib.chapters import chapter_seeds, chapter_steps, generation_inputs
    from fidelity_lib.datasets import TOY_SPLIT_SEEDS, book_records
    from fidelity_lib.toyworld.calibration import CHOSEN_ST, ST_CANDIDATES, toy_ae_config, toy_st_config

    records, options = generation_inputs(book_records(["toy_gpt", "toy_mscoco"], 1), "toy", 25)
    assert options.ae_config == toy_ae_config() and options.st_config == toy_st_config() and options.steps == 25
    relation, listed = (options.layouts[r.prompt] for r in records)
    gap = ST_CANDIDATES[CHOSEN_ST][1]
    first, second = relation
    assert abs(abs(first.x - second.x) + abs(first.y - second.y) - 2 * gap) < 1e-9  # 2 x gap apart along the relation
    assert len(listed) == 3 and [p.x for p in listed] == sorted(p.x for p in listed)
    assert chapter_seeds("toy", 2) == list(TOY_SPLIT_SEEDS["held_out"][:2]) and chapter_seeds("paper", 2) == list(range(64))
    assert chapter_steps("paper") == 50 and chapter_steps("toy") == 25
    paper_records, paper_options = generation_inputs(book_records(["gpt"], 1), "paper", 50)
    assert paper_options.st_config is None and paper_options.layouts is None and paper_records == book_records(["gpt"], 1)
    with pytest.raises(ValueError, match="toy-set records only"):
        generation_inputs(book_records(["gpt"], 1), "toy", 25)


def test_every_st_job_of_the_headline_has_a_layout_for_each_of_its_prompts():
    """toy_mscoco's captions name three objects: ST lays them out left to right (stated_layout), as chapter 2 does,
    instead of stopping the headline run at its first three-object prompt."""
    from fidelity_lib.toyworld.calibration import headline_plan, stated_layout
    from fidelity_lib.toyworld.experiment import pairs_for

    st_jobs = [job for job in headline_plan().jobs if job.setting.method in ("st", "st+ae")]
    assert {job.set_name for job in st_jobs} >= {"toy_mscoco", "toy_gpt", "toy_vsr"}
    for job in st_jobs:
        for record, _ in pairs_for(job.set_name, "held_out", job.n_pairs):
            layout = stated_layout(record.prompt, job.setting.layout_gap)
            assert len(layout) >= 2 and all(0 <= p.x <= 1 and 0 <= p.y <= 1 for p in layout)


def write_cached_rows(path, made, weights: str) -> None:
    """Headline cache lines for toy_gpt: every listed (setting, pairs) scored with both objects present, relation wrong."""
    score = {"present": 2, "objects_present": 2, "n_objects": 2, "all_present": True, "all_objects": True,
             "first_present": True, "second_present": True, "relation_correct": False}
    rows = [{"set": "toy_gpt", "setting": setting.name, "method": setting.method, "prompt": record.prompt, "seed": seed,
             "split": "held_out", "weights": weights, "seconds": 0.1} | score
            for setting, pairs in made for record, seed in pairs]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_the_headline_tables_take_only_jobs_made_whole(tmp_path):
    """A job stopped part-way (here ST with one pair made) stays out of the tables until all its pairs are made."""
    from fidelity_lib.toyworld.calibration import CHOSEN_ST, Job, Plan, baseline, st_setting
    from fidelity_lib.toyworld.experiment import write_tables

    sd, st = baseline(), st_setting(CHOSEN_ST)
    pairs = pairs_for("toy_gpt", "held_out", 3)  # one round: every held-out prompt once
    write_cached_rows(tmp_path / "headline_rows.jsonl", ((sd, pairs), (st, pairs[:1])), "w")
    rates, paired = write_tables(Plan("held_out", [Job("toy_gpt", sd, 3), Job("toy_gpt", st, 3)]), "headline", tmp_path, "w")
    assert set(rates["setting"]) == {"sd"} and paired.empty


def test_a_run_filtered_to_some_jobs_still_writes_the_tables_of_every_job_made_whole(tmp_path):
    """`--sets`/`--methods` choose which images to make; the tables keep the baseline and every other finished job."""
    from fidelity_lib.toyworld.calibration import CHOSEN_ST, baseline, st_setting
    from fidelity_lib.toyworld.experiment import main, read_results
    from fidelity_lib.toyworld.model import weights_id

    pairs = pairs_for("toy_gpt", "held_out", 3)
    write_cached_rows(tmp_path / "headline_rows.jsonl", ((baseline(), pairs), (st_setting(CHOSEN_ST), pairs)), weights_id())
    main(["headline", "--pairs", "3", "--sets", "toy_gpt", "--methods", "st", "--tables-only", "--out", str(tmp_path)])
    rates, _ = read_results("headline_rates", tmp_path)
    paired, _ = read_results("headline_paired", tmp_path)
    assert set(rates["method"]) == {"sd", "st"}
    assert set(paired["method"]) == {"st"} and (paired["n_pairs"] == len(pairs)).all()


def test_every_committed_calibration_row_is_a_job_of_the_calibration_plan():
    """`calibrate --tables-only` rewrites calibrate_*.csv from the plan: a candidate missing from it would drop out."""
    from fidelity_lib.toyworld.experiment import read_results

    paired, _ = read_results("calibrate_paired")
    planned = {(job.set_name, job.setting.name) for job in calibration_plan().jobs}
    assert set(zip(paired["set"], paired["setting"])) <= planned
