"""Detector-based object accuracy and spatial-relation accuracy (``SD/evaluation/*.py`` of the official code).

Object accuracy = detected expected objects / all expected objects, pooled over images (score > 0.4). Relation
accuracy (score > 0.5, box-centre rules) is reported as in the original scripts, over relations whose two objects
were both detected, and unconditionally (a missing object counts as wrong). Detector labels are mapped to the 76
evaluated COCO names by name; traffic light, fire hydrant, stop sign and parking meter are ignored.
Deliberate fixes: every image is evaluated (the VSR relation script evaluates one, the GPT one the first 500 files in
listing order); ``original_counting=True`` reproduces that selection.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from fidelity_lib.datasets import COCO_CLASSES, EXCLUDED_CLASSES, Relation
from fidelity_lib.detections import Detection, Detector, relation_holds
from fidelity_lib.metrics.images import (
    MetricResult, cached_frame, collect_images, entry_row, iter_batches, problems_of, score_cache_path, write_json,
)
from fidelity_lib.models import WeightsNotFoundError, default_device


OBJECT_THRESHOLD = 0.4  # object accuracy keeps detections with score > 0.4 (strict), detector_result_*.py L115
RELATION_THRESHOLD = 0.5  # relation accuracy keeps detections with score > 0.5
RTDETR_REPO_ID = "PekingU/rtdetr_r101vd_coco_o365"
LABEL_ALIASES = {
    "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "tvmonitor": "tv", "tv monitor": "tv",
    "diningtable": "dining table", "pottedplant": "potted plant", "hair dryer": "hair drier", "doughnut": "donut",
    "cellphone": "cell phone", "mobile phone": "cell phone", "television": "tv",
}  # spellings other COCO label maps use, mapped to the names of the original scripts


def eval_class_name(label: str, excluded: tuple[str, ...] = EXCLUDED_CLASSES) -> str | None:
    """A detector label mapped by name to one of the 76 evaluated COCO names; None for excluded or non-COCO labels."""
    name = " ".join(label.strip().lower().replace("_", " ").split())
    name = LABEL_ALIASES.get(name, name)
    return name if name in COCO_CLASSES and name not in excluded else None


def detected_names(detections: list[Detection], threshold: float) -> set[str]:
    """Labels of the detections scoring strictly above ``threshold``."""
    return {detection.label for detection in detections if detection.score > threshold}


def objects_found(detections: list[Detection], objects: tuple[str, ...], threshold: float = OBJECT_THRESHOLD) -> list[bool]:
    """For each expected object: is its name among the detections above the threshold (any count, any place)?"""
    names = detected_names(detections, threshold)
    return [name in names for name in objects]


def relation_outcome(detections: list[Detection], relation: Relation, threshold: float = RELATION_THRESHOLD) -> bool | None:
    """True if any (subject, object) pair of detections above the threshold satisfies the rule; None if one is missing."""
    kept = [detection for detection in detections if detection.score > threshold]
    subjects = [d for d in kept if d.label == relation.subject]
    objects = [d for d in kept if d.label == relation.object]
    if not subjects or not objects:
        return None
    return any(relation_holds(s.center, o.center, relation.relation) for s in subjects for o in objects)


def detections_from_output(scores, labels, boxes, id2label: dict[int, str]) -> list[Detection]:
    """Post-processed detector output as Detections, labels mapped by name to the 76 classes (others dropped)."""
    detections = []
    for score, label, box in zip(scores.tolist(), labels.tolist(), boxes.tolist()):
        name = eval_class_name(id2label[int(label)])
        if name is not None:
            detections.append(Detection(name, float(score), tuple(float(v) for v in box)))
    return detections


class TransformersDetector:
    """A transformers object detector (RT-DETR, DETR, ...) behind the Detector interface, mapping labels by name."""

    def __init__(self, model, processor, name: str, device: str | torch.device | None = None, min_score: float = 0.3):
        self.device = torch.device(device) if device is not None else default_device()
        self.model, self.processor, self.name, self.min_score = model.to(self.device).eval(), processor, name, min_score

    def detect(self, image: Image.Image) -> list[Detection]:
        """Labelled boxes above ``min_score`` in the image's pixel coordinates."""
        return self.detect_batch([image])[0]

    @torch.no_grad()
    def detect_batch(self, images: list[Image.Image]) -> list[list[Detection]]:
        """``detect`` for several images in one forward pass."""
        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        sizes = [(image.height, image.width) for image in images]
        results = self.processor.post_process_object_detection(outputs, threshold=self.min_score, target_sizes=sizes)
        return [detections_from_output(r["scores"], r["labels"], r["boxes"], self.model.config.id2label) for r in results]


def tiny_detector(seed: int = 0, device: str | torch.device | None = None) -> TransformersDetector:
    """A random-weight RT-DETR over the 80 COCO names, built offline (plumbing only: its boxes are noise)."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig

    backbone = RTDetrResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic",
        out_features=["stage2", "stage3", "stage4"], out_indices=[2, 3, 4],
    )
    config = RTDetrConfig(
        backbone_config=backbone, encoder_in_channels=[32, 64, 128], encoder_hidden_dim=32, d_model=32,
        encoder_ffn_dim=64, decoder_ffn_dim=64, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        decoder_in_channels=[32, 32, 32], num_queries=30, num_denoising=0, id2label=dict(enumerate(COCO_CLASSES)),
        initializer_bias_prior_prob=0.4,  # random scores around 0.4, so both thresholds keep some boxes
    )
    torch.manual_seed(seed)
    model = RTDetrForObjectDetection(config)
    processor = RTDetrImageProcessor(size={"height": 64, "width": 64})
    return TransformersDetector(model, processor, f"tiny-random-rtdetr(seed={seed})", device)


def paper_detector(weights: str | os.PathLike | None = None, device=None) -> TransformersDetector:
    """RT-DETR (COCO) from a local folder or the HF cache (never downloads); any COCO detector in transformers works."""
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    source = str(Path(weights).expanduser()) if weights is not None else RTDETR_REPO_ID
    try:
        model = AutoModelForObjectDetection.from_pretrained(source, local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as error:
        raise WeightsNotFoundError(
            f"Detector weights were not found in {source} ({type(error).__name__}). This book never downloads weights. "
            f"On a machine with internet access run\n    huggingface-cli download {RTDETR_REPO_ID}\n(fills the Hugging "
            f"Face cache) or add --local-dir ~/weights/rtdetr and pass detector_weights=~/weights/rtdetr. Any COCO "
            f"detector in transformers works (e.g. facebook/detr-resnet-101); its labels are mapped by name."
        ) from error
    return TransformersDetector(model, processor, f"transformers {source}", device)


def _detect_all(detector: Detector, images: list[Image.Image]) -> list[list[Detection]]:
    batch = getattr(detector, "detect_batch", None)
    return batch(images) if batch is not None else [detector.detect(image) for image in images]


def detection_frame(
    entries: list,
    detector: Detector,
    object_threshold: float = OBJECT_THRESHOLD,
    relation_threshold: float = RELATION_THRESHOLD,
    batch_size: int = 8,
) -> pd.DataFrame:
    """One row per image: its detections, objects found and relation outcomes (None = an object is missing)."""
    rows = []
    for good, images, bad in iter_batches(entries, batch_size):
        rows += [entry_row(entry, problem.reason) for entry, problem in bad]
        for entry, detections in zip(good, _detect_all(detector, images) if good else []):
            found = objects_found(detections, entry.record.objects, object_threshold)
            outcomes = [relation_outcome(detections, relation, relation_threshold) for relation in entry.record.relations]
            rows.append(
                entry_row(entry)
                | {
                    "detections": [asdict(detection) for detection in detections],
                    "objects": list(entry.record.objects),
                    "objects_found": found,
                    "n_objects": len(found),
                    "n_objects_found": sum(found),
                    "relations": [asdict(relation) for relation in entry.record.relations],
                    "relation_outcomes": outcomes,
                    "n_relations": len(outcomes),
                    "n_relations_evaluated": sum(outcome is not None for outcome in outcomes),
                    "n_relations_correct": sum(outcome is True for outcome in outcomes),
                }
            )
    frame = pd.DataFrame(rows)
    for column in ("n_objects", "n_objects_found", "n_relations", "n_relations_evaluated", "n_relations_correct"):
        frame[column] = frame.get(column, np.nan)
    frame["detector"] = detector.name
    return frame


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def original_relation_rows(frame: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The images the original relation scripts evaluate: VSR only the first (``range(1)``), GPT the first 500 listed."""
    return frame.head(1) if dataset == "vsr" else frame.head(500) if dataset == "gpt" else frame


def detection_aggregates(
    frame: pd.DataFrame,
    object_threshold: float = OBJECT_THRESHOLD,
    relation_threshold: float = RELATION_THRESHOLD,
    original_counting: bool = False,
) -> dict:
    """Pooled object accuracy, relation accuracy over relations whose objects were both detected, and unconditional."""
    readable = frame[frame["error"].isna()]
    relations = original_relation_rows(readable, str(readable["dataset"].iloc[0])) if original_counting else readable
    objects, found = readable["n_objects"].sum(), readable["n_objects_found"].sum()
    total, evaluated, correct = (relations[c].sum() for c in ("n_relations", "n_relations_evaluated", "n_relations_correct"))
    return {
        "all_object_numbers": int(objects),
        "generated_object_numbers": int(found),
        "object_accuracy": _ratio(found, objects),
        "all_relation_numbers": int(evaluated),
        "correct_relation_numbers": int(correct),
        "relation_accuracy": _ratio(correct, evaluated),
        "relation_numbers_including_missing": int(total),
        "relation_accuracy_unconditional": _ratio(correct, total),
        "detector": str(frame["detector"].iloc[0]),
        "object_threshold": object_threshold,
        "relation_threshold": relation_threshold,
        "counting": "original" if original_counting else "fixed",
        "n_images": len(readable),
        "n_images_for_relations": len(relations),
        "unreadable_images": problems_of(frame),
    }


def _raw_records(frame: pd.DataFrame) -> dict:
    keys = ("detections", "objects_found", "relation_outcomes")
    return {
        prompt: {"image_names": [Path(p).name for p in group["path"]], **{key: list(group[key]) for key in keys}}
        for prompt, group in frame[frame["error"].isna()].groupby("prompt", sort=False)
    }


def detection_score(
    images_dir: str | Path,
    dataset: str,
    methods: list[str] | None = None,
    *,
    detector: Detector,
    metrics_dir: str | Path | None = None,
    object_threshold: float = OBJECT_THRESHOLD,
    relation_threshold: float = RELATION_THRESHOLD,
    original_counting: bool = False,
) -> MetricResult:
    """Object and relation accuracy; writes ``<metrics_dir>/<method>/detection_{raw,aggregated}_metrics.json``.

    ``original_counting`` reproduces the relation scripts' image selection (VSR: one image; GPT: the first 500 files in
    directory-listing order); the default evaluates every image. Both report the conditional and unconditional accuracy.
    """
    entries = collect_images(images_dir, dataset, methods, listdir_order=original_counting)
    settings = {"detector": detector.name, "object_threshold": object_threshold, "relation_threshold": relation_threshold}
    compute = partial(detection_frame, detector=detector, object_threshold=object_threshold, relation_threshold=relation_threshold)
    frame = cached_frame(entries, compute, score_cache_path(metrics_dir, "detection", settings))
    result = MetricResult(frame, {})
    for method, group in frame.groupby("method", sort=False):
        result.aggregates[method] = detection_aggregates(group, object_threshold, relation_threshold, original_counting)
        if metrics_dir is not None:
            folder = Path(metrics_dir) / method
            result.files.append(write_json(_raw_records(group), folder / "detection_raw_metrics.json"))
            result.files.append(write_json(result.aggregates[method], folder / "detection_aggregated_metrics.json"))
    return result
