"""The toy world: coloured shapes, an SD-architecture model trained on them on a CPU, an exact detector, a small CLIP."""

from fidelity_lib.toyworld.detector import ToyDetector, find_object, object_present
from fidelity_lib.toyworld.model import toy_clip, toy_pipeline, weights_available, weights_id
from fidelity_lib.toyworld.scenes import generate_scenes, write_coco, write_coco_dataset

__all__ = [
    "ToyDetector",
    "find_object",
    "generate_scenes",
    "object_present",
    "toy_clip",
    "toy_pipeline",
    "weights_available",
    "weights_id",
    "write_coco",
    "write_coco_dataset",
]
