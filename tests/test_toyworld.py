"""The toy world: scenes, COCO files, the exact detector, the shipped weights, the pipeline and the toy CLIP."""

import hashlib

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from fidelity_lib.models import clip_tokenizer
from fidelity_lib.toyworld.detector import ToyDetector, object_present
from fidelity_lib.toyworld.evaluate import ONE_OBJECT_PROMPTS, baseline_images, evaluate, wilson_interval
from fidelity_lib.toyworld.model import toy_clip, toy_pipeline, weights_available
from fidelity_lib.toyworld.model import TOKENIZER_MAX_LENGTH, WEIGHTS_DIR, all_toy_captions, used_token_ids
from fidelity_lib.toyworld.scenes import generate_scenes, write_coco_dataset
from fidelity_lib.toyworld.scenes import parse_caption, relation_between, shape_mask

MIN_ONE_OBJECT_HITS = 10  # of 12 (3 prompts x 4 seeds); the shipped weights give 12
MIN_CLIP_CORRECT = 34  # of 40 one-object scenes, 12 captions to choose from (chance ~3; the shipped CLIP gets 39)


def test_detector_finds_every_object_of_generated_scenes():
    detector = ToyDetector()
    scenes = generate_scenes(400, seed=123)
    for scene in scenes:
        labels = sorted(d.label for d in detector.detect(scene.pil()))
        assert labels == sorted(obj.name for obj in scene.objects), scene.caption
    assert any(len(scene.objects) == 2 for scene in scenes) and any(len(scene.objects) == 3 for scene in scenes)


def test_detector_boxes_and_name_matching():
    scene = next(s for s in generate_scenes(50, seed=5) if len(s.objects) == 2)
    detections = ToyDetector().detect(scene.pil())
    for obj in scene.objects:
        match = next(d for d in detections if d.label == obj.name)
        assert match.box == tuple(float(v) for v in obj.drawn_box)
        assert object_present(detections, obj.name) and object_present(detections, obj.shape)


def test_captions_name_their_objects_and_relations():
    for scene in generate_scenes(300, seed=7):
        caption = parse_caption(scene.caption)
        assert len(caption.mentions) == len(scene.objects), scene.caption
        for mention, obj in zip(caption.mentions, scene.objects):
            assert mention.shape == obj.shape and mention.colour in (None, obj.colour), scene.caption
        if caption.relation:
            first, second = scene.objects
            assert caption.relation == relation_between(first.center, second.center)


def test_the_grammar_has_every_paper_form_and_one_object_scenes_stay_the_majority():
    captions = [parse_caption(scene.caption) for scene in generate_scenes(2000, seed=8)]
    texts = [caption.text for caption in captions]
    assert sum(len(c.mentions) == 1 for c in captions) > len(captions) / 2
    assert any(c.mentions[0].colour is None and len(c.mentions) == 1 for c in captions)  # "a circle"
    assert any(len(c.mentions) == 2 and c.relation is None and {m.colour is None for m in c.mentions} == {True, False} for c in captions)
    assert any(" with " in text for text in texts) and any(", " in text for text in texts)
    assert any(text.startswith("the ") and " is " in text for text in texts)  # "the blue square is below the red circle"
    assert any(text.startswith("a ") and c.relation and " is " not in text for text, c in zip(texts, captions))


def test_mention_positions_are_the_clip_tokenizers():
    tokenizer = clip_tokenizer(TOKENIZER_MAX_LENGTH)
    for scene in generate_scenes(500, seed=9):
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(scene.caption).input_ids)
        for mention in parse_caption(scene.caption).mentions:
            assert tokens[mention.noun_index] == mention.shape + "</w>"
            if mention.colour:
                assert tokens[mention.colour_index] == mention.colour + "</w>"


def test_object_masks_cover_their_objects_at_every_grid():
    scene = next(s for s in generate_scenes(50, seed=5) if len(s.objects) == 2)
    for size in (32, 16, 8):
        masks = scene.object_masks(size)
        assert masks.shape == (2, size, size) and masks.max() <= 1
        for mask, obj in zip(masks, scene.objects):
            area = shape_mask(obj.shape, obj.box[2] - obj.box[0]).sum()
            assert mask.sum() * (32 // size) ** 2 == pytest.approx(area)


def test_parse_caption_rejects_text_outside_the_grammar():
    with pytest.raises(ValueError, match="not a toy caption"):
        parse_caption("a cat and a dog")


def test_coco_files_load_in_pycocotools(tmp_path):
    instances_path, captions_path = write_coco_dataset(tmp_path, n_images=20, seed=0)
    instances, captions = COCO(str(instances_path)), COCO(str(captions_path))
    assert len(instances.getImgIds()) == 20 and len(captions.getAnnIds()) == 20
    assert len(instances.getCatIds()) == 12
    annotation = instances.loadAnns(instances.getAnnIds(imgIds=[1]))[0]
    assert annotation["iscrowd"] == 0 and annotation["area"] > 0 and len(annotation["bbox"]) == 4
    assert (tmp_path / "images" / instances.loadImgs([1])[0]["file_name"]).is_file()


def test_toy_vocabulary_covers_every_caption():
    tokenizer = clip_tokenizer(TOKENIZER_MAX_LENGTH)
    used = set(used_token_ids())
    for caption in all_toy_captions():
        ids = tokenizer(caption)["input_ids"]
        assert len(ids) <= TOKENIZER_MAX_LENGTH and set(ids) <= used, caption


def test_wilson_interval():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)


def test_shipped_weights_match_their_checksums():
    assert weights_available(), f"toy-world weights missing from {WEIGHTS_DIR}"
    lines = (WEIGHTS_DIR / "SHA256SUMS").read_text().splitlines()
    assert {line.split()[1] for line in lines} >= {
        "config.json", "vae.safetensors", "unet.safetensors", "text_encoder.safetensors", "clip.safetensors", "blip.safetensors",
    }
    for line in lines:
        digest, name = line.split()
        assert hashlib.sha256((WEIGHTS_DIR / name).read_bytes()).hexdigest() == digest, name
    assert sum((WEIGHTS_DIR / line.split()[1]).stat().st_size for line in lines) < 10_000_000


@pytest.fixture(scope="module")
def pipe():
    return toy_pipeline()


def test_toy_pipeline_is_deterministic_per_seed(pipe):
    first = pipe("a red circle", num_inference_steps=5, generator=torch.Generator().manual_seed(3)).images[0]
    second = pipe("a red circle", num_inference_steps=5, generator=torch.Generator().manual_seed(3)).images[0]
    assert first.size == (32, 32)
    assert np.array_equal(np.asarray(first), np.asarray(second))
    assert pipe.weights_id.startswith("toyworld@")


def test_baseline_draws_the_colour_of_one_object_prompts(pipe):
    frame = evaluate(ONE_OBJECT_PROMPTS[:3], range(4), lambda prompt, seeds: baseline_images(pipe, prompt, seeds), "baseline")
    print(f"one-object colour hits: {frame['all_present'].sum()}/{len(frame)}")
    assert frame["all_present"].sum() >= MIN_ONE_OBJECT_HITS, frame


def test_toy_clip_prefers_the_true_caption():
    clip = toy_clip()
    model, preprocess, tokenizer = clip.model, clip.preprocess, clip.tokenizer
    scenes = [s for s in generate_scenes(300, seed=11) if len(s.objects) == 1 and parse_caption(s.caption).mentions[0].colour][:40]
    captions = sorted({f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle")})
    with torch.no_grad():
        images = model.encode_image(torch.stack([preprocess(s.pil()) for s in scenes]))
        texts = model.encode_text(tokenizer(captions))
    best = (images @ texts.T).argmax(dim=1)
    correct = sum(captions[i] == s.caption for i, s in zip(best.tolist(), scenes))
    print(f"toy CLIP: {correct}/{len(scenes)}")
    assert correct >= MIN_CLIP_CORRECT, correct


MIN_CAPTIONS_RIGHT = 0.7  # of 64 held-out scenes; the shipped toy BLIP names every object of 0.86 of 200


def test_toy_blip_names_the_objects_of_held_out_scenes():
    from fidelity_lib.components import load_captioner
    from fidelity_lib.toyworld.captioner import caption_accuracy

    captioner = load_captioner("smoke", device="cpu")
    assert captioner.name.startswith("toy-blip@")
    accuracy = caption_accuracy(captioner, generate_scenes(64, seed=10_000))
    print(accuracy)
    assert accuracy["names_the_objects"] >= MIN_CAPTIONS_RIGHT
