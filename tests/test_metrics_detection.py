"""Object and relation accuracy on hand-made detections, label mapping, and the detector adapter."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fidelity_lib.datasets import Relation, load_prompt_set, prompt_folder_name
from fidelity_lib.detections import Detection, relation_holds
from fidelity_lib.metrics.detection import (
    detection_aggregates,
    detection_score,
    detections_from_output,
    eval_class_name,
    objects_found,
    relation_outcome,
    tiny_detector,
)


def box(label, cx, cy, score=0.9, half=5.0):
    return Detection(label, score, (cx - half, cy - half, cx + half, cy + half))


@pytest.mark.parametrize(
    "relation, expected",
    [("left of", True), ("right of", False), ("above", False), ("below", True)],
)
def test_relation_rules_use_box_centres_with_y_down(relation, expected):
    cat, dog = box("cat", 10, 40), box("dog", 30, 20)
    assert relation_holds(cat.center, dog.center, relation) is expected


@pytest.mark.parametrize("relation", ["left of", "right of", "above", "below"])
def test_relation_ties_are_false(relation):
    assert relation_holds(box("cat", 10, 10).center, box("dog", 10, 10, half=8).center, relation) is False


def test_unknown_relation_is_refused_with_the_valid_words():
    with pytest.raises(ValueError, match="left of, right of, above, below"):
        relation_holds((0, 0), (1, 1), "near")


def test_missing_object_skips_the_relation_and_low_scores_count_as_missing():
    detections = [box("cat", 10, 10), box("dog", 30, 10, score=0.5)]
    assert relation_outcome(detections, Relation("cat", "left of", "dog")) is None  # 0.5 is not > 0.5
    assert relation_outcome(detections, Relation("cat", "left of", "dog"), threshold=0.4) is True
    assert relation_outcome(detections, Relation("cat", "left of", "bed")) is None


def test_any_pair_of_instances_satisfies_a_relation():
    detections = [box("cat", 50, 10), box("cat", 5, 10), box("dog", 20, 10)]
    assert relation_outcome(detections, Relation("cat", "left of", "dog")) is True
    assert relation_outcome(detections, Relation("cat", "right of", "dog")) is True
    assert relation_outcome(detections, Relation("dog", "above", "cat")) is False


def test_object_threshold_is_strict():
    detections = [box("cat", 1, 1, score=0.4), box("dog", 1, 1, score=0.41), box("cup", 1, 1, score=0.1)]
    assert objects_found(detections, ("cat", "dog", "cup", "bed")) == [False, True, False, False]
    assert objects_found(detections, ("cat", "cup"), threshold=0.05) == [True, True]


def test_labels_are_mapped_by_name_and_the_four_excluded_classes_dropped():
    assert eval_class_name("motorbike") == "motorcycle"
    assert eval_class_name("Dining Table") == "dining table"
    assert [eval_class_name(n) for n in ("traffic light", "fire hydrant", "stop sign", "parking meter")] == [None] * 4
    assert eval_class_name("N/A") is None
    id2label = {1: "person", 10: "traffic light", 13: "stop sign", 18: "dog"}  # HF COCO ids have gaps
    found = detections_from_output(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 10, 13, 18]), torch.zeros(4, 4), id2label)
    assert [d.label for d in found] == ["person", "dog"]


def frame_rows(rows):
    import pandas as pd

    base = {"error": None, "path": "x.png", "dataset": "gpt", "detector": "hand"}
    return pd.DataFrame([base | row for row in rows])


def test_aggregates_pool_objects_and_report_conditional_and_unconditional_relations():
    frame = frame_rows(
        [
            {"n_objects": 2, "n_objects_found": 2, "n_relations": 1, "n_relations_evaluated": 1, "n_relations_correct": 1},
            {"n_objects": 5, "n_objects_found": 1, "n_relations": 3, "n_relations_evaluated": 1, "n_relations_correct": 0},
        ]
    )
    aggregates = detection_aggregates(frame)
    assert aggregates["object_accuracy"] == 3 / 7  # pooled, not the mean of 1.0 and 0.2
    assert aggregates["all_relation_numbers"] == 2 and aggregates["correct_relation_numbers"] == 1
    assert aggregates["relation_accuracy"] == 0.5
    assert aggregates["relation_accuracy_unconditional"] == 1 / 4
    assert aggregates["detector"] == "hand"


def test_original_counting_evaluates_one_vsr_image():
    frame = frame_rows([{"n_objects": 2, "n_objects_found": 2, "n_relations": 1, "n_relations_evaluated": 1, "n_relations_correct": c} for c in (1, 0, 0)])
    frame["dataset"] = "vsr"
    assert detection_aggregates(frame)["relation_accuracy"] == 1 / 3
    original = detection_aggregates(frame, original_counting=True)
    assert original["relation_accuracy"] == 1.0 and original["n_images_for_relations"] == 1


class ScriptedDetector:
    """Puts every expected VSR object where its relation holds, except in images of seed 1 (nothing found)."""

    name = "scripted"

    def __init__(self, records):
        self.records = records

    def detect(self, image):
        if image.getpixel((0, 0)) == (0, 0, 0):
            return []
        record = self.records[image.getpixel((0, 0))[0]]
        relation = record.relations[0]
        places = {"left of": ((10, 30), (50, 30)), "right of": ((50, 30), (10, 30)), "above": ((30, 10), (30, 50)), "below": ((30, 50), (30, 10))}
        (sx, sy), (ox, oy) = places[relation.relation]
        return [box(relation.subject, sx, sy), box(relation.object, ox, oy)]


def test_detection_score_on_a_folder(tmp_path):
    records = load_prompt_set("vsr")[:3]
    for record in records:
        folder = tmp_path / "images" / "sd" / prompt_folder_name(record.prompt)
        folder.mkdir(parents=True)
        Image.new("RGB", (64, 64), (record.index + 1, 0, 0)).save(folder / "0.png")
        Image.new("RGB", (64, 64), (0, 0, 0)).save(folder / "1.png")
    detector = ScriptedDetector({record.index + 1: record for record in records})
    result = detection_score(tmp_path / "images", "vsr", detector=detector, metrics_dir=tmp_path / "metrics")
    expected_found = sum(o != "stop sign" for r in records for o in r.objects)
    aggregates = result.aggregates["sd"]
    assert aggregates["all_object_numbers"] == 12 and aggregates["generated_object_numbers"] == expected_found
    assert aggregates["relation_accuracy"] == 1.0 and aggregates["relation_accuracy_unconditional"] == 0.5
    assert len(result.frame) == 6
    saved = json.loads((tmp_path / "metrics" / "sd" / "detection_aggregated_metrics.json").read_text())
    assert saved["detector"] == "scripted" and saved["object_accuracy"] == aggregates["object_accuracy"]


def test_tiny_detector_returns_mapped_boxes_in_pixels():
    detector = tiny_detector()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    detections = detector.detect(image)
    assert detections and all(eval_class_name(d.label) == d.label for d in detections)
    assert all(0 <= d.box[0] <= d.box[2] <= 80 and 0 <= d.box[1] <= d.box[3] <= 48 for d in detections)
    assert all(d.score > detector.min_score for d in detections)
