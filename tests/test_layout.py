"""The layout predictor on synthetic COCO-format sets and tiny random RoBERTas (CPU, offline, one thread)."""

import json
import shutil
import warnings

import pytest
import torch

from fidelity_lib.datasets import load_prompt_set
from fidelity_lib.layout import (
    CocoAnnotationsMissingError, CocoFilter, LayoutPredictor, NoObjectWarning, ObjectPlacement, TrainConfig, build_lexicon,
    coco_examples, extract_objects, gpt_examples, latest_checkpoint, load_layouts, record_mentions, train,
    write_layouts, write_synthetic_coco,
)
from fidelity_lib.layout.extraction import caption_relations
from fidelity_lib.layout.model import LayoutConfig, component_means
from fidelity_lib.layout.train import batch_loss
from fidelity_lib.spacetime import predict_layout

FAST = TrainConfig(epochs=2, batch_size=16, encoder_lr=3e-3, head_lr=3e-3, coco_per_epoch=None)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = write_synthetic_coco(tmp_path_factory.mktemp("coco"), n_images=120, seed=0)
    examples, names = coco_examples(folder)
    return folder, examples, names


@pytest.fixture(scope="module")
def left_right_predictor(tmp_path_factory):
    """Trained on captions that are all "X to the left of / right of Y", with their relation labels."""
    torch.set_num_threads(1)
    folder = write_synthetic_coco(tmp_path_factory.mktemp("lr"), n_images=200, seed=1, relations=("left of", "right of"))
    examples, names = coco_examples(folder, rules=CocoFilter(caption_relations=True))
    predictor = LayoutPredictor.tiny([e.sentence for e in examples], names, hidden_size=32)
    config = TrainConfig(epochs=30, batch_size=8, encoder_lr=3e-3, head_lr=3e-3, coco_per_epoch=None)
    return train(predictor, examples, config, progress=False)[0]


def fresh(examples, names, seed=0):
    return LayoutPredictor.tiny([e.sentence for e in examples], names, seed=seed, hidden_size=32)


def test_synthetic_set_reads_through_pycocotools(synthetic):
    _, examples, names = synthetic
    assert "cat" in names and "sky-other" in names
    assert len(examples) >= 100
    assert all(0 <= v <= 1 for e in examples for centre in e.centres for v in centre)


def test_a_few_steps_lower_the_loss(synthetic):
    _, examples, names = synthetic
    predictor = fresh(examples, names)
    batch = examples[:32]
    predictor.model.eval()
    with torch.no_grad():
        before = batch_loss(predictor, batch).item()
    predictor, history = train(predictor, examples, FAST, progress=False)
    with torch.no_grad():
        after = batch_loss(predictor, batch).item()
    assert after < before
    assert list(history.epoch) == [1, 2]


def test_predictions_are_deterministic_and_sampling_needs_a_seed(synthetic):
    _, examples, names = synthetic
    predictor = fresh(examples, names)
    sentence = "A cat to the left of a dog."
    assert predictor.config.component == "argmax"  # the smoke profile's default
    assert predictor.predict(sentence) == predictor.predict(sentence)
    assert predictor.predict(sentence, component="sample", seed=3) == predictor.predict(sentence, component="sample", seed=3)
    with pytest.raises(ValueError, match="seed"):
        predictor.predict(sentence, component="sample")
    with pytest.raises(ValueError, match="sample, argmax"):
        predictor.predict(sentence, component="mode")
    assert [p.name for p in predictor.predict(sentence)] == ["cat", "dog"]


def test_the_paper_profile_draws_the_component_from_pi_and_argmax_is_its_switch():
    """inference_coco.py draws each object's component with multinomial(pi) (bbox_head.py L154): the paper default."""
    assert LayoutConfig(profile="paper").component == "sample"
    assert LayoutConfig(profile="paper", component="argmax").component == "argmax"
    assert LayoutConfig.from_json({"profile": "paper"}).component == "sample"  # a file saved before the switch
    assert LayoutConfig.from_json({"profile": "smoke"}).component == "argmax"
    with pytest.raises(ValueError, match="sample, argmax"):
        LayoutConfig(component="mean")
    params = {"pi_logits": torch.zeros(200, 2), "mu": torch.tensor([[0.2, 0.2], [0.8, 0.8]]).expand(200, 2, 2)}
    drawn = component_means(params, sample=True, generator=torch.Generator().manual_seed(0))[:, 0]
    assert 50 < (drawn == 0.2).sum() < 150 and (drawn == 0.2).sum() + (drawn == 0.8).sum() == 200
    params["pi_logits"] = torch.tensor([[0.0, 1.0]]).expand(200, 2)
    assert (component_means(params)[:, 0] == 0.8).all()  # argmax: the likeliest component's mean


def test_a_sampling_predictor_draws_with_the_seed_it_is_given(synthetic, tmp_path):
    _, examples, names = synthetic
    predictor = LayoutPredictor.tiny([e.sentence for e in examples], names, hidden_size=32, profile="paper")
    assert predictor.config.component == "sample"
    sentence = "A cat to the left of a dog."
    with pytest.raises(ValueError, match="needs a seed"):
        predictor.predict(sentence)
    drawn = {tuple((p.x, p.y) for p in predictor.predict(sentence, seed=seed)) for seed in range(20)}
    assert len(drawn) > 1  # a random tiny model's pi is spread over its components
    argmax = predictor.predict(sentence, component="argmax", seed=5)
    assert argmax == predictor.predict(sentence, component="argmax", seed=5)
    assert predict_layout(sentence, predictor, seed=7) == predictor.predict(sentence, seed=7)
    assert LayoutPredictor.load(predictor.save(tmp_path / "saved")).config.component == "sample"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoObjectWarning)
        first, again, other = (json.loads(write_layouts(predictor, "vsr", "test", tmp_path / name, seed=seed).read_text())
                               for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert (first["component"], first["seed"], other["seed"]) == ("sample", 0, 1)
    assert first["layouts"] == again["layouts"] != other["layouts"]


@pytest.mark.slow  # ~6-10 s with its fixture: kept out of the fast loop
def test_cat_left_of_dog(left_right_predictor):
    cat, dog = left_right_predictor.predict("a cat to the left of a dog")
    assert (cat.name, dog.name) == ("cat", "dog")
    assert cat.x < dog.x
    dog, cat = left_right_predictor.predict("a dog to the left of a cat")
    assert dog.x < cat.x


def test_extraction_finds_gpt_objects_in_95_percent_of_sentences():
    lexicon = build_lexicon()
    records = load_prompt_set("gpt")
    hits = 0
    for record in records:
        found = {m.name for m in extract_objects(record.prompt, lexicon)}
        wanted = {extract_objects(name, lexicon)[-1].name for name in record.objects}
        hits += wanted <= found
    recall = hits / len(records)
    print(f"GPT sentences with every listed object found: {hits}/{len(records)} = {recall:.1%}")
    assert recall >= 0.95


def test_extraction_synonyms_compounds_and_custom_names():
    lexicon = build_lexicon()
    mentions = extract_objects("The yellow television sits beside a wall sink and the white teddy bear.", lexicon)
    assert [(m.name, m.phrase) for m in mentions] == [("tv", "The yellow television"), ("sink", "a wall sink"), ("teddy bear", "the white teddy bear")]
    toy = build_lexicon(("red circle", "blue square"))
    found = extract_objects("two red circles above a blue square", toy)
    assert [m.name for m in found] == ["red circle", "blue square"]
    assert caption_relations("two red circles above a blue square", found) == ((0, 1, "above"),)


def test_dataset_records_use_their_own_objects():
    gpt = load_prompt_set("gpt")[0]  # white couch, silver bed
    assert [(m.name, m.phrase) for m in record_mentions(gpt)] == [("couch", "white couch"), ("bed", "silver bed")]
    examples = gpt_examples()
    assert examples[0].relations == ((0, 1, "left of"),)
    assert sum(len(e.relations) for e in examples) >= 900


def test_checkpoint_round_trip(synthetic, tmp_path):
    _, examples, names = synthetic
    predictor, _ = train(fresh(examples, names), examples[:32], FAST, checkpoint_dir=tmp_path / "ckpt", progress=False)
    loaded = LayoutPredictor.load(latest_checkpoint(tmp_path / "ckpt"))
    saved = LayoutPredictor.load(predictor.save(tmp_path / "saved"))
    sentence = "A red car is on the right of the bench."
    assert loaded.predict(sentence) == predictor.predict(sentence) == saved.predict(sentence)
    assert loaded.config.to_json() == json.loads(json.dumps(predictor.config.to_json()))
    for name, value in predictor.model.state_dict().items():
        assert torch.equal(value, saved.model.state_dict()[name])


def test_resume_matches_an_uninterrupted_run(synthetic, tmp_path):
    _, examples, names = synthetic
    data = examples[:48]
    config = TrainConfig(epochs=3, batch_size=16, encoder_lr=3e-3, head_lr=3e-3, coco_per_epoch=None)
    straight, history = train(fresh(examples, names), data, config, checkpoint_dir=tmp_path / "a", progress=False)
    # interrupt after epoch 2: drop epoch 3 and point latest.json back at epoch 2
    train(fresh(examples, names), data, config, checkpoint_dir=tmp_path / "b", progress=False)
    shutil.rmtree(tmp_path / "b" / "epoch_0003")
    (tmp_path / "b" / "latest.json").write_text(json.dumps({"checkpoint": "epoch_0002", "epoch": 2}))
    resumed, resumed_history = train(fresh(examples, names, seed=9), data, config, checkpoint_dir=tmp_path / "b", progress=False)
    assert resumed_history.loss.tolist() == history.loss.tolist()
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_sentence_without_objects_gives_an_empty_layout_and_warns(synthetic):
    _, examples, names = synthetic
    predictor = fresh(examples, names)
    with pytest.warns(NoObjectWarning, match="empty layout"):
        assert predictor.predict("Nothing recognisable here at all.") == []


def test_object_placement_validates_its_range():
    ObjectPlacement("cat", "a cat", 0.0, 1.0)
    with pytest.raises(ValueError, match=r"y=1.2 is outside \[0, 1\]"):
        ObjectPlacement("cat", "a cat", 0.5, 1.2)


def test_missing_coco_folder_names_the_expected_files(tmp_path):
    with pytest.raises(CocoAnnotationsMissingError, match="captions_train2017.json.*instances_train2017.json"):
        coco_examples(tmp_path / "nowhere")


def test_layout_file_carries_the_profile(synthetic, tmp_path):
    _, examples, names = synthetic
    predictor = fresh(examples, names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoObjectWarning)
        path = write_layouts(predictor, "vsr", weights="random (test)", folder=tmp_path)
    content = json.loads(path.read_text())
    prompts = {record.prompt for record in load_prompt_set("vsr")}
    assert (content["profile"], content["dataset"], set(content["layouts"])) == ("smoke", "vsr", prompts)
    profile, layouts = load_layouts("vsr", tmp_path)
    assert profile == "smoke"
    assert [p.name for p in layouts["The bed is below the cat."]] == ["bed", "cat"]


def test_the_paper_profile_predicts_with_dropout_on_and_eval_mode_is_its_switch(synthetic):
    """inference_coco.py never calls model.eval(): its layouts are drawn with dropout on. The paper default does the
    same with masks from the prediction's seed; inference_dropout=False (the smoke default) predicts in eval mode."""
    _, examples, names = synthetic
    texts, sentence = [e.sentence for e in examples], "A cat to the left of a dog."
    assert LayoutConfig(profile="paper").inference_dropout and not LayoutConfig(profile="smoke").inference_dropout
    assert LayoutConfig.from_json({"profile": "paper"}).inference_dropout  # a file saved before the switch
    official = LayoutPredictor.tiny(texts, names, hidden_size=32, profile="paper", component="argmax")
    with pytest.raises(ValueError, match="needs a seed"):
        official.predict(sentence)
    drawn = {tuple((p.x, p.y) for p in official.predict(sentence, seed=seed)) for seed in range(5)}
    assert len(drawn) > 1 and official.predict(sentence, seed=3) == official.predict(sentence, seed=3)
    assert not official.model.training  # left in eval mode for everything else
    switched = LayoutPredictor.tiny(texts, names, hidden_size=32, profile="paper", component="argmax", inference_dropout=False)
    assert len({tuple((p.x, p.y) for p in switched.predict(sentence, seed=seed)) for seed in range(5)}) == 1
