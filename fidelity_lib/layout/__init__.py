"""The layout predictor of spatial-temporal attention: sentence -> one centre per object (official ``LT/``)."""

from fidelity_lib.layout.data import (
    CocoAnnotationsMissingError, CocoFilter, LayoutExample, coco_examples, coco_files, gpt_examples,
    gpt_training_records, split_examples,
)
from fidelity_lib.layout.evaluate import dataset_layouts, draw_layouts, evaluate_predictor, load_layouts, write_layouts
from fidelity_lib.layout.extraction import COCO_NAMES, ObjectMention, build_lexicon, extract_objects, record_mentions
from fidelity_lib.layout.model import LayoutConfig, LayoutModel, RobertaMissingError
from fidelity_lib.layout.predictor import LayoutPredictor, NoObjectWarning, ObjectPlacement
from fidelity_lib.layout.synthetic import write_synthetic_coco
from fidelity_lib.layout.train import TrainConfig, latest_checkpoint, train

__all__ = [
    "COCO_NAMES", "CocoAnnotationsMissingError", "CocoFilter", "LayoutConfig", "LayoutExample", "LayoutModel",
    "LayoutPredictor", "NoObjectWarning", "ObjectMention", "ObjectPlacement", "RobertaMissingError", "TrainConfig",
    "build_lexicon", "coco_examples", "coco_files", "dataset_layouts", "draw_layouts", "evaluate_predictor",
    "extract_objects", "gpt_examples", "gpt_training_records", "latest_checkpoint", "load_layouts", "record_mentions",
    "split_examples", "train", "write_layouts", "write_synthetic_coco",
]
