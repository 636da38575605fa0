"""The layout predictor's GPT-style training data: the official gpt-3.pkl sentences, shipped as JSON lines, never an
evaluation prompt, and what chapter 1 trains on in both profiles (CPU, offline, one thread)."""

import json
import pickle
import re
from pathlib import Path

import pytest
import torch

from fidelity_lib.chapters import layout_training_setup
from fidelity_lib.datasets import ST_SETS, load_prompt_set
from fidelity_lib.layout import LayoutPredictor, evaluate_predictor, gpt_examples, gpt_training_records, write_synthetic_coco
from fidelity_lib.layout.convert_gpt3 import GPT3_FIELDS, GPT3_JSONL, convert
from fidelity_lib.layout.data import encode_batch

CHAPTER_1 = Path(__file__).resolve().parent.parent / "notebooks" / "01_layout.py"


def normalised(sentence: str) -> str:
    return " ".join(sentence.lower().split())


@pytest.fixture(scope="module")
def records():
    return gpt_training_records()


def test_training_records_are_the_official_2000_and_no_evaluation_sentence(records):
    evaluation = {normalised(record.prompt) for name in ST_SETS for record in load_prompt_set(name)}
    assert len(evaluation) > 1300  # gpt, mscoco and vsr, 500 prompts each (some repeated)
    assert len(records) == 2000 and {example.source for example in records} == {"gpt-3"}
    assert not [example.sentence for example in records if normalised(example.sentence) in evaluation]
    assert sum(len(example.relations) for example in records) == 3139  # every relation triple of the pickle


def test_each_object_sits_on_its_head_word_and_relations_index_objects(records):
    first = records[0]  # "The wine glass was ... with the bottle of wine resting securely beneath it."
    assert [first.sentence[o.start:o.end] for o in first.objects] == ["bottle", "glass"]
    assert [o.name for o in first.objects] == ["bottle", "wine glass"] and first.relations == ((0, 1, "below"),)
    assert all(0 <= s < len(e.objects) and 0 <= o < len(e.objects) for e in records for s, o, _ in e.relations)


def test_conversion_keeps_the_pickles_fields_in_order(tmp_path):
    lines = GPT3_JSONL.read_text(encoding="utf-8").splitlines()[:3]
    items = [[json.loads(line)[field] for field in GPT3_FIELDS] for line in lines]  # the pickle's positional items
    (tmp_path / "gpt-3.pkl").write_bytes(pickle.dumps(items))
    out = convert(tmp_path / "gpt-3.pkl", tmp_path / "gpt-3.jsonl")
    assert out.read_text(encoding="utf-8").splitlines() == lines


def test_conversion_rejects_a_malformed_item(tmp_path):
    item = ["A cat left of a dog.", ["A ", "cat ", "left ", "of ", "a ", "dog."], [1, 5], [[1, 5, "beside"]], ["A cat", "a dog"]]
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps([item]))
    with pytest.raises(ValueError, match="item 0 .*a word outside"):
        convert(tmp_path / "bad.pkl", tmp_path / "bad.jsonl")


def test_chapter_1_trains_on_them_never_on_an_evaluation_set(tmp_path, records):
    coco = write_synthetic_coco(tmp_path / "coco", n_images=12, seed=0)
    *_, data_name, paper_train = layout_training_setup("paper", str(coco), 1, tmp_path / "work", tmp_path / "layouts")
    assert paper_train == records and "gpt-3.pkl" in data_name
    *_, smoke_train = layout_training_setup("smoke", None, 1, tmp_path / "work", tmp_path / "layouts")
    assert smoke_train == records[:400]
    source = CHAPTER_1.read_text()
    assert re.search(r"^source, .*, gpt_train = layout_training_setup\(", source, re.MULTILINE)
    assert re.search(r"^predictor, history = train\(predictor, coco_train \+ gpt_train, ", source, re.MULTILINE)
    assert re.search(r"^table = evaluate_predictor\(predictor, coco_val, gpt_val\)", source, re.MULTILINE)
    assert re.search(r"^gpt_val = gpt_examples\(\)$", source, re.MULTILINE)  # the 500 gpt.txt prompts, held out whole


def test_every_training_object_gets_a_token_and_the_agreement_has_an_interval(records):
    torch.set_num_threads(1)
    held_out = gpt_examples()[:40]
    predictor = LayoutPredictor.tiny([e.sentence for e in records + held_out], hidden_size=32)
    batch = encode_batch(predictor.tokenizer, [e.sentence for e in records], [e.objects for e in records], 128)
    assert all(position is not None for row in batch.positions for position in row)
    table = evaluate_predictor(predictor, [], held_out).set_index("metric")
    agreement = table.loc["relation agreement (held-out GPT labels)"]
    assert agreement["low"] <= agreement["value"] <= agreement["high"] and agreement["n"] > 30
