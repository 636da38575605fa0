"""Training data for the layout model: COCO-format captions + boxes, GPT sentences with relations (COCODataset.py)."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from fidelity_lib.datasets import PromptRecord, evaluation_name, load_prompt_set
from fidelity_lib.layout.convert_gpt3 import GPT3_FIELDS, GPT3_JSONL
from fidelity_lib.layout.extraction import ObjectMention, build_lexicon, caption_relations, extract_objects, record_mentions

COCO_DOWNLOAD = (
    "http://images.cocodataset.org/annotations/annotations_trainval2017.zip (captions + instances, 241 MB) and "
    "http://images.cocodataset.org/annotations/stuff_annotations_trainval2017.zip (stuff, optional, 1.1 GB)"
)


class CocoAnnotationsMissingError(FileNotFoundError):
    pass


@dataclass(frozen=True)
class LayoutExample:
    """A sentence, its objects, their centres (COCO; None for GPT) and relation labels (subject index, object index, word)."""

    sentence: str
    objects: tuple[ObjectMention, ...]
    centres: tuple[tuple[float, float], ...] | None = None
    relations: tuple[tuple[int, int, str], ...] = ()
    source: str = "coco"


@dataclass
class CocoFilter:
    min_area_fraction: float = 0.02  # keep boxes with area / image area > 0.02 (COCODataset.py L73-282)
    min_objects: int = 3  # images with 3..8 kept objects, instances + stuff (COCODataset.py); the toy world needs 1
    max_objects: int = 8
    captions_per_image: int = 1  # the first caption of each image (COCODataset.py L73-282)
    caption_relations: bool = False  # also read relation labels from captions (extension; the original: GPT only)


def coco_files(coco_dir: str | Path, split: str | None = None) -> dict[str, Path]:
    """The captions / instances (/ stuff) JSON files of a COCO-format folder (or its ``annotations/`` subfolder)."""
    root = Path(coco_dir).expanduser()
    folder = root / "annotations" if (root / "annotations").is_dir() else root
    if split is None:
        found = sorted(folder.glob("instances_*.json")) if folder.is_dir() else []
        split = found[0].stem.removeprefix("instances_") if len(found) == 1 else "train2017"
    files = {kind: folder / f"{kind}_{split}.json" for kind in ("captions", "instances", "stuff")}
    missing = [str(files[kind]) for kind in ("captions", "instances") if not files[kind].is_file()]
    if missing:
        raise CocoAnnotationsMissingError(
            f"COCO annotations not found: expected {', '.join(missing)} (and optionally {files['stuff']}). "
            f"Download {COCO_DOWNLOAD}, unzip into {root}, and pass that folder as coco_dir."
        )
    if not files["stuff"].is_file():
        del files["stuff"]
    return files


def _load_coco(path: Path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        return COCO(str(path))


def coco_examples(coco_dir: str | Path, split: str | None = None, rules: CocoFilter | None = None) -> tuple[list[LayoutExample], tuple[str, ...]]:
    """Caption objects matched to the centre of the first kept box of their category; also the category names."""
    rules = rules or CocoFilter()
    files = coco_files(coco_dir, split)
    captions, instances = _load_coco(files["captions"]), _load_coco(files["instances"])
    sources = [instances] + ([_load_coco(files["stuff"])] if "stuff" in files else [])
    names = tuple(dict.fromkeys(c["name"] for coco in sources for c in coco.loadCats(coco.getCatIds()) if c["name"] != "other"))
    lexicon = build_lexicon(names)
    image_ids = sorted(set(instances.getImgIds()).intersection(*(coco.getImgIds() for coco in sources[1:])))
    examples = []
    for image_id in image_ids:
        image = instances.loadImgs(image_id)[0]
        width, height = image["width"], image["height"]
        kept = [
            (coco.loadCats(ann["category_id"])[0]["name"], ann["bbox"])
            for coco in sources
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            if ann["bbox"][2] * ann["bbox"][3] / (width * height) > rules.min_area_fraction
        ]
        kept = [(name, box) for name, box in kept if name != "other"]
        if not rules.min_objects <= len(kept) <= rules.max_objects:
            continue
        for caption in captions.loadAnns(captions.getAnnIds(imgIds=image_id))[: rules.captions_per_image]:
            example = _match_caption(caption["caption"].strip(), kept, width, height, lexicon)
            if example is not None and rules.caption_relations:
                example = replace(example, relations=caption_relations(example.sentence, example.objects))
            if example is not None:
                examples.append(example)
    return examples, names


def _match_caption(sentence: str, kept: list, width: int, height: int, lexicon: dict) -> LayoutExample | None:
    """The caption's objects that have a box in the image, with the normalised centre of the first such box."""
    objects, centres = [], []
    for mention in extract_objects(sentence, lexicon):
        box = next((box for name, box in kept if name in mention.categories), None)
        if box is not None:
            objects.append(mention)
            centres.append(((box[0] + box[2] / 2) / width, (box[1] + box[3] / 2) / height))
    return LayoutExample(sentence, tuple(objects), tuple(centres)) if objects else None


def gpt_example(record: PromptRecord, lexicon: dict | None = None) -> LayoutExample:
    """A GPT sentence with its located objects and the relation labels between them."""
    mentions = record_mentions(record, lexicon)
    index = {evaluation_name(m.phrase): i for i, m in enumerate(mentions)} | {m.name: i for i, m in enumerate(mentions)}
    relations = tuple(
        (index[r.subject], index[r.object], r.relation)
        for r in record.relations
        if r.subject in index and r.object in index and index[r.subject] != index[r.object]
    )
    return LayoutExample(record.prompt, tuple(mentions), None, relations, source="gpt")


def gpt_examples(lexicon: dict | None = None) -> list[LayoutExample]:
    """The 500 GPT evaluation prompts (gpt.txt) as relation-labelled examples: for evaluation only, never for training."""
    return [gpt_example(record, lexicon) for record in load_prompt_set("gpt")]


def gpt3_example(row: dict, lexicon: dict) -> LayoutExample:
    """A gpt-3.jsonl row: objects at its head-word tokens, relation labels between them (COCODataset.py L312-339)."""
    starts = [sum(len(token) for token in row["tokens"][:index]) for index in range(len(row["tokens"]))]
    objects = []
    for head, phrase in zip(row["head_indices"], row["noun_phrases"]):
        word = row["tokens"][head].strip()  # tokens carry their trailing space
        in_phrase = extract_objects(phrase, lexicon)
        name = in_phrase[-1].name if in_phrase else word.lower()
        objects.append(ObjectMention(name, phrase, starts[head], starts[head] + len(word), lexicon.get(word.lower(), ())))
    index = {head: position for position, head in enumerate(row["head_indices"])}
    relations = tuple((index[subject], index[obj], word) for subject, obj, word in row["relations"])
    return LayoutExample(row["sentence"], tuple(objects), None, relations, source="gpt-3")


def gpt_training_records(lexicon: dict | None = None) -> list[LayoutExample]:
    """The paper profile's GPT-style training examples: the official 2000 gpt-3.pkl sentences (data/st_attn/gpt-3.jsonl),
    none of them a sentence of an evaluation set."""
    if not GPT3_JSONL.is_file():
        raise FileNotFoundError(f"{GPT3_JSONL} is missing: write it with `python -m fidelity_lib.layout.convert_gpt3 gpt-3.pkl`.")
    lexicon = lexicon if lexicon is not None else build_lexicon()
    rows = [json.loads(line) for line in GPT3_JSONL.read_text(encoding="utf-8").splitlines() if line.strip()]
    malformed = [number for number, row in enumerate(rows, 1) if tuple(row) != GPT3_FIELDS]
    if malformed:
        raise ValueError(f"{GPT3_JSONL} lines {malformed[:5]} do not hold exactly the fields {GPT3_FIELDS}.")
    return [gpt3_example(row, lexicon) for row in rows]


def split_examples(examples: list, val_fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """(train, validation): the first ``val_fraction`` of a permutation is validation (base_data_loader.py, seed 0)."""
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(len(examples) * val_fraction)
    return [examples[i] for i in order[cut:]], [examples[i] for i in order[:cut]]


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    object_mask: torch.Tensor
    positions: list[list[int | None]]  # per example, per object: its token index (None if truncated away)


def encode_batch(tokenizer, sentences: list[str], objects: list[tuple[ObjectMention, ...]], max_length: int) -> Batch:
    """Tokenise, flag the first BPE token of every object's head word (COCODataset.py; inference flags all pieces)."""
    encoded = tokenizer(sentences, padding=True, truncation=True, max_length=max_length, return_offsets_mapping=True, return_tensors="pt")
    object_mask = torch.zeros_like(encoded["input_ids"], dtype=torch.bool)
    positions = []
    for row, (offsets, mentions) in enumerate(zip(encoded["offset_mapping"].tolist(), objects)):
        row_positions = []
        for mention in mentions:
            token = next((t for t, (s, e) in enumerate(offsets) if e > s and s < mention.end and e > mention.start), None)
            if token is not None:
                object_mask[row, token] = True
            row_positions.append(token)
        positions.append(row_positions)
    if any(p is None for row in positions for p in row):
        warnings.warn(f"Some objects lie beyond the first {max_length} tokens and get no position.", stacklevel=2)
    return Batch(encoded["input_ids"], encoded["attention_mask"], object_mask, positions)
