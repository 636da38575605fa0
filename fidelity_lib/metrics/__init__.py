"""Evaluation metrics over a folder of generated images laid out as ``<out>/<method>/<prompt>/<seed>.png``.

Each metric returns a MetricResult: a pandas frame with one row per image (unreadable images kept, with their error),
per-method aggregates with the original scripts' keys, and the JSON files it wrote under ``<metrics_dir>/<method>/``.
"""

from fidelity_lib.detections import Detection, Detector, relation_holds
from fidelity_lib.metrics.blip_similarity import BlipCaptioner, Captioner, blip_similarity, paper_blip, tiny_blip
from fidelity_lib.metrics.clip_score import ClipScorer, clip_score, split_prompt, template_texts
from fidelity_lib.metrics.detection import (
    OBJECT_THRESHOLD,
    RELATION_THRESHOLD,
    TransformersDetector,
    detection_score,
    eval_class_name,
    objects_found,
    paper_detector,
    relation_outcome,
    tiny_detector,
)
from fidelity_lib.metrics.images import (
    ImageEntry,
    ImageProblem,
    MetricResult,
    NoImagesError,
    UnknownMethodError,
    UnknownPromptFolderError,
    collect_images,
    open_image,
)
from fidelity_lib.metrics.lavis import LavisCaptioner
from fidelity_lib.metrics.summary import bootstrap_ratio, metric_figure, metric_table, metrics_for, wide_table

__all__ = [
    "BlipCaptioner", "Captioner", "ClipScorer", "Detection", "Detector", "ImageEntry", "ImageProblem",
    "LavisCaptioner", "MetricResult", "NoImagesError", "OBJECT_THRESHOLD", "RELATION_THRESHOLD", "TransformersDetector",
    "UnknownMethodError", "UnknownPromptFolderError", "blip_similarity", "bootstrap_ratio", "clip_score", "collect_images",
    "detection_score", "eval_class_name", "metric_figure", "metric_table", "metrics_for", "objects_found", "open_image",
    "paper_blip", "paper_detector", "relation_holds", "relation_outcome", "split_prompt", "template_texts", "tiny_blip",
    "tiny_detector", "wide_table",
]
