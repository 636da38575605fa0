import pytest

from fidelity_lib.datasets import (
    SET_NAMES, TOY_SETS, Relation, UnknownPromptSetError, find_record, load_prompt_set, load_prompts, prompt_folder_name,
    split_records,
)
from fidelity_lib.models import clip_tokenizer
from fidelity_lib.toyworld.model import TOKENIZER_MAX_LENGTH, used_token_ids

# Counts from the original evaluation scripts and prompt files (docs/official_*.md: Datasets, Prompts).
EXPECTED = {  # set: (prompts, objects, relations)
    "ae_animal_animal": (66, 132, 0), "ae_animal_object": (144, 288, 0), "ae_object_object": (66, 132, 0),
    "gpt": (500, 1600, 950), "mscoco": (500, 809, 0), "vsr": (500, 1000, 500),
    # the toy counterparts, from the toy grammar
    "toy_ae_shape_shape": (12, 24, 0), "toy_ae_shape_object": (48, 96, 0), "toy_ae_object_object": (108, 216, 0),
    "toy_gpt": (120, 240, 120), "toy_mscoco": (120, 300, 0), "toy_vsr": (120, 240, 120), "toy_one_object": (15, 15, 0),
}


@pytest.mark.parametrize("name", SET_NAMES)
def test_set_sizes_match_the_original_scripts(name):
    records = load_prompt_set(name)
    counts = (len(records), sum(len(r.objects) for r in records), sum(len(r.relations) for r in records))
    assert counts == EXPECTED[name]


def test_ae_token_indices_point_at_the_subject_nouns():
    tokenizer = clip_tokenizer()
    for name in ("ae_animal_animal", "ae_animal_object", "ae_object_object"):
        for record in load_prompt_set(name):
            ids = tokenizer(record.prompt).input_ids
            words = [tokenizer.decode([ids[i]]).strip() for i in record.subject_token_indices]
            assert tuple(words) == record.objects and ids[record.eot_index] == 49407


def test_gpt_relations_and_phrases():
    first = load_prompt_set("gpt")[0]
    assert first.phrases == ("white couch", "silver bed")
    assert first.relations == (Relation("couch", "left of", "bed"),)
    assert load_prompt_set("ae_object_object")[0].phrases == ("pink crown", "purple bow")


def test_folder_names_are_safe_unique_and_invertible():
    for name in SET_NAMES:
        records = load_prompt_set(name)
        folders = [prompt_folder_name(r.prompt) for r in records]
        assert all("/" not in f and len(f.encode()) < 200 for f in folders)
        assert len(set(folders)) == len({r.prompt for r in records})
    record = load_prompt_set("gpt")[7]
    assert find_record("gpt", prompt_folder_name(record.prompt)) == record


def test_bad_sources_say_what_to_do(tmp_path):
    with pytest.raises(UnknownPromptSetError, match="choose one of"):
        load_prompt_set("coco")
    with pytest.raises(UnknownPromptSetError, match="neither a prompt set"):
        load_prompts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n# only a comment\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        load_prompts(tmp_path / "empty.txt")
    (tmp_path / "mine.txt").write_text("a cat and a dog\n\na red ball\n")
    assert [r.prompt for r in load_prompts(tmp_path / "mine.txt")] == ["a cat and a dog", "a red ball"]


@pytest.mark.parametrize("name", TOY_SETS)
def test_toy_sets_are_readable_split_in_half_and_name_their_subjects(name):
    tokenizer = clip_tokenizer(TOKENIZER_MAX_LENGTH)
    records = load_prompt_set(name)
    dev, held_out = split_records(records, "dev"), split_records(records, "held_out")
    assert len(dev) + len(held_out) == len(records) and abs(len(dev) - len(held_out)) <= 1
    assert not {r.prompt for r in dev} & {r.prompt for r in held_out}
    assert load_prompt_set(name) == records  # the same prompts and split every time
    for record in records:
        ids = tokenizer(record.prompt).input_ids
        assert len(ids) <= TOKENIZER_MAX_LENGTH and set(ids) <= set(used_token_ids()), record.prompt
        tokens = tokenizer.convert_ids_to_tokens(ids)
        assert [tokens[i] for i in record.subject_token_indices] == [o.split()[-1] + "</w>" for o in record.objects]
        assert record.eot_index == len(ids) - 1
    if name in ("toy_gpt", "toy_vsr"):
        assert all(len(r.relations) == 1 and r.relations[0].subject == r.objects[0] for r in records)


def test_an_unknown_split_is_refused():
    with pytest.raises(ValueError, match="dev, held_out"):
        split_records(load_prompt_set("toy_gpt"), "test")


def test_the_toy_profile_runs_each_paper_sets_toy_counterpart():
    from fidelity_lib.datasets import book_records, set_for_profile

    assert set_for_profile("mscoco", "toy") == "toy_mscoco" and set_for_profile("ae_animal_animal", "toy") == "toy_ae_shape_shape"
    assert set_for_profile("mscoco", "paper") == "mscoco" and set_for_profile("toy_gpt", "paper") == "toy_gpt"
    assert all(TOY_SETS[set_for_profile(paper, "toy")] == paper for paper in ("gpt", "vsr", "ae_object_object"))
    with pytest.raises(UnknownPromptSetError, match="toy_mscoco"):
        set_for_profile("coco", "toy")
    shown = book_records(["toy_gpt", "gpt"], 2)
    assert [r.set_name for r in shown] == ["toy_gpt", "toy_gpt", "gpt", "gpt"]
    assert all(r.extra["split"] == "held_out" for r in shown[:2]) and shown[2:] == load_prompts("gpt")[:2]


def test_every_prompt_the_smoke_chapters_run_is_readable_by_the_toy_text_encoder():
    """No token the toy text encoder never learnt (a zero embedding row), and nothing cut at its 16 positions."""
    from fidelity_lib.book import CHAPTER_PARAMETERS
    from fidelity_lib.datasets import AE_SETS, set_for_profile
    from fidelity_lib.toyworld.evaluate import ONE_OBJECT_PROMPTS
    from fidelity_lib.toyworld.model import load_components, weights_available

    if not weights_available():
        pytest.skip("no toy-world weights shipped")
    embedding = load_components()[2].get_input_embeddings().weight
    tokenizer = clip_tokenizer(TOKENIZER_MAX_LENGTH)
    chapter_sets = {*AE_SETS, "gpt", *CHAPTER_PARAMETERS["04_eval"]["dataset"]}
    toy_sets = {set_for_profile(name, "toy") for name in chapter_sets} | set(TOY_SETS)
    prompts = {record.prompt for name in toy_sets for record in load_prompt_set(name)} | set(ONE_OBJECT_PROMPTS)
    for prompt in sorted(prompts):
        ids = tokenizer(prompt).input_ids
        assert len(ids) <= TOKENIZER_MAX_LENGTH, prompt
        assert all(embedding[i].abs().sum() > 0 for i in ids), prompt
