"""CLIP image-text and BLIP text-text similarity: prompt split, template ensembles, aggregates, robust folders."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fidelity_lib.clip import tiny_clip
from fidelity_lib.components import load_captioner, load_detector, load_metric_clip
from fidelity_lib.datasets import UnknownPromptSetError, load_prompt_set, prompt_folder_name
from fidelity_lib.metrics import ClipScorer, NoImagesError, UnknownMethodError, UnknownPromptFolderError, blip_similarity, clip_score, split_prompt, template_texts, tiny_blip
from fidelity_lib.metrics.clip_score import IMAGENET_TEMPLATES, encode_text
from fidelity_lib.models import WeightsNotFoundError


@pytest.fixture(scope="module")
def scorer():
    return ClipScorer(tiny_clip(), device="cpu")


def make_folder(root, dataset="ae_animal_object", prompts=3, seeds=2, methods=("sd", "ae")):
    rng = np.random.default_rng(0)
    for method in methods:
        for record in load_prompt_set(dataset)[:prompts]:
            folder = root / method / prompt_folder_name(record.prompt)
            folder.mkdir(parents=True)
            for seed in range(seeds):
                Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{seed}.png")
    return root


def test_prompt_split_follows_the_original():
    assert split_prompt("a dog and a black apple") == ("a dog", "a black apple")
    assert split_prompt("a bird with a crown") == ("a bird", "a crown")
    assert split_prompt("a cat with a hat and a dog") == ("a cat with a hat", "a dog")  # " and " wins
    assert split_prompt("a red car") is None


def test_templates_are_the_80_imagenet_ones_with_the_string_fixes():
    texts = template_texts("a cat")
    assert len(IMAGENET_TEMPLATES) == 80 and texts[0] == "a bad photo of a cat."
    assert "a photo of a cat." in texts and not any("a a cat" in t or "the a cat" in t for t in texts)


def test_trimmed_text_encoding_equals_open_clip(scorer):
    tokens = scorer.tokenizer(["a cat", "a photo of a red bench and a monkey"])
    assert torch.allclose(encode_text(scorer.model, tokens), scorer.model.encode_text(tokens), atol=1e-5)


def test_template_ensemble_equals_a_direct_computation(scorer):
    with torch.no_grad():
        features = scorer.model.encode_text(scorer.tokenizer(template_texts("a cat and a dog")))
    features = features / features.norm(dim=-1, keepdim=True)
    expected = features.mean(dim=0) / features.mean(dim=0).norm()
    got = scorer.text_embeddings(["a cat", "a cat and a dog"])[1]
    assert torch.allclose(got, expected, atol=1e-5)
    assert "a cat and a dog" in scorer.cache


def test_clip_aggregates_are_flat_numpy_means(tmp_path, scorer):
    make_folder(tmp_path / "images")
    result = clip_score(tmp_path / "images", "ae_animal_object", scorer=scorer, metrics_dir=tmp_path / "metrics")
    for method in ("sd", "ae"):
        raw = json.loads((tmp_path / "metrics" / method / "clip_raw_metrics.json").read_text())
        saved = json.loads((tmp_path / "metrics" / method / "clip_aggregated_metrics.json").read_text())
        full = [v for record in raw.values() for v in record["full_text"]]
        minimum = [min(a, b) for record in raw.values() for a, b in zip(record["first_half"], record["second_half"])]
        assert len(raw) == 3 and len(full) == 6
        assert saved["full_text_aggregation"] == pytest.approx(np.mean(full))
        assert saved["min_first_second_aggregation"] == pytest.approx(np.mean(minimum))
        assert saved["clip_model"] == scorer.name and result.aggregates[method]["n_images"] == 6


def test_corrupt_and_truncated_images_are_reported_and_skipped(tmp_path, scorer):
    root = make_folder(tmp_path / "images", methods=("sd",))
    folder = next((root / "sd").iterdir())
    good = (folder / "0.png").read_bytes()
    (folder / "2.png").write_bytes(good[: len(good) // 2])
    (folder / "3.png").write_bytes(b"not a png at all")
    result = clip_score(root, "ae_animal_object", scorer=scorer)
    aggregates = result.aggregates["sd"]
    assert len(result.frame) == 8 and aggregates["n_images"] == 6
    reasons = {item["path"].split("/")[-1]: item["reason"] for item in aggregates["unreadable_images"]}
    assert set(reasons) == {"2.png", "3.png"} and "truncated" in reasons["2.png"].lower()
    readable = result.frame[result.frame["error"].isna()]
    assert aggregates["full_text_aggregation"] == pytest.approx(readable["full_text"].mean())


def test_clear_errors_for_bad_inputs(tmp_path, scorer):
    with pytest.raises(NoImagesError):
        clip_score(tmp_path / "missing", "mscoco", scorer=scorer)
    (tmp_path / "empty" / "sd").mkdir(parents=True)
    with pytest.raises(NoImagesError):
        clip_score(tmp_path / "empty", "mscoco", scorer=scorer)
    root = make_folder(tmp_path / "images", prompts=1, seeds=1, methods=("sd",))
    with pytest.raises(UnknownPromptSetError):
        clip_score(root, "coco", scorer=scorer)
    with pytest.raises(UnknownMethodError):
        clip_score(root, "ae_animal_object", methods=["st"], scorer=scorer)
    with pytest.raises(NoImagesError):  # the folder only holds another set's images
        clip_score(root, "mscoco", scorer=scorer)
    (root / "sd" / "a prompt of no set").mkdir()
    with pytest.raises(UnknownPromptFolderError, match="matches no prompt of the ae_animal_object set"):
        clip_score(root, "ae_animal_object", scorer=scorer)


def test_folders_of_other_sets_are_skipped(tmp_path, scorer):
    root = make_folder(tmp_path / "images", prompts=2, seeds=1, methods=("sd",))
    make_folder(root / "other", dataset="vsr", prompts=1, seeds=1, methods=("sd",))
    vsr_folder = next((root / "other" / "sd").iterdir())
    vsr_folder.rename(root / "sd" / vsr_folder.name)
    result = clip_score(root, "ae_animal_object", methods=["sd"], scorer=scorer)
    assert len(result.frame) == 2 and set(result.frame["dataset"]) == {"ae_animal_object"}


def test_unsplit_prompts_count_in_the_full_prompt_mean_unless_original_counting(tmp_path, scorer):
    root = make_folder(tmp_path / "images", dataset="vsr", prompts=2, methods=("sd",))
    fixed = clip_score(root, "vsr", scorer=scorer).aggregates["sd"]
    original = clip_score(root, "vsr", scorer=scorer, original_counting=True).aggregates["sd"]
    assert fixed["n_images"] == 4 and np.isfinite(fixed["full_text_aggregation"])
    assert original["n_images_split"] == 0 and np.isnan(original["full_text_aggregation"])


def test_blip_similarity_mean_and_population_std(tmp_path, scorer):
    make_folder(tmp_path / "images", prompts=2, methods=("sd",))
    captioner = tiny_blip()
    result = blip_similarity(tmp_path / "images", "ae_animal_object", captioner=captioner, scorer=scorer, metrics_dir=tmp_path / "m")
    raw = json.loads((tmp_path / "m" / "sd" / "blip_raw_metrics.json").read_text())
    saved = json.loads((tmp_path / "m" / "sd" / "blip_aggregated_metrics.json").read_text())
    values = [v for record in raw.values() for v in record["text_similarities"]]
    assert len(values) == 4 and all(isinstance(c, str) and c for r in raw.values() for c in r["captions"])
    assert saved["average_similarity"] == pytest.approx(np.mean(values))
    assert saved["std_similarity"] == pytest.approx(np.std(values))
    assert saved["captioner"] == captioner.name == result.aggregates["sd"]["captioner"]


def test_blip_captioner_generates_with_lavis_settings_and_strips_the_prompt(monkeypatch):
    captioner = tiny_blip()
    seen = {}
    tokenizer = captioner.processor.tokenizer
    prompt_ids = tokenizer(["a picture of a cat"], return_tensors="pt").input_ids

    def generate(**kwargs):
        seen.update(kwargs)
        return prompt_ids.repeat(len(kwargs["pixel_values"]), 1)

    monkeypatch.setattr(captioner.model, "generate", generate)
    captions = captioner.caption([Image.new("RGB", (40, 40), (200, 10, 10))] * 2)
    assert captions == ["a cat", "a cat"]  # "a picture of " removed, as LAVIS does
    assert {k: seen[k] for k in ("num_beams", "max_length", "min_length")} == {"num_beams": 3, "max_length": 30, "min_length": 10}
    assert tokenizer.decode(seen["input_ids"][0], skip_special_tokens=True) == "a picture of"


def test_paper_profile_never_downloads_and_says_what_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(WeightsNotFoundError, match="huggingface-cli download"):
        load_metric_clip("paper", weights=tmp_path / "nothing")
    with pytest.raises(WeightsNotFoundError, match="huggingface-cli download Salesforce/blip-image-captioning-base"):
        load_captioner("paper", weights=tmp_path / "nothing")
    with pytest.raises(WeightsNotFoundError, match="huggingface-cli download PekingU/rtdetr"):
        load_detector("paper", weights=tmp_path / "nothing")
