"""A small synthetic COCO-format annotation set (real COCO names and schema) with spatially consistent captions."""

from __future__ import annotations

import json
import random
from pathlib import Path

from fidelity_lib.datasets import COCO_CLASSES

SYNTHETIC_THINGS = ("person", "cat", "dog", "car", "chair", "bottle", "cup", "horse", "bird", "bench", "clock", "umbrella")
SYNTHETIC_STUFF = {"sky-other": 157, "grass": 124}  # COCO-Stuff 2017 ids
COLOURS = ("red", "blue", "white", "black", "green", "brown")
RELATION_TEMPLATES = {
    "left of": ("{a} to the left of {b}", "{a} is left of {b}"),
    "right of": ("{a} to the right of {b}", "{a} is on the right of {b}"),
    "above": ("{a} above {b}", "{a} is above {b}"),
    "below": ("{a} below {b}", "{a} is under {b}"),
}
WIDTH, HEIGHT, SPLIT = 640, 480, "synthetic"


def _centres(relation: str, rng: random.Random) -> tuple[tuple[float, float], tuple[float, float]]:
    """Subject and object centres that satisfy the relation by a clear margin (y downward)."""
    near, far, free = (lambda: rng.uniform(0.12, 0.38)), (lambda: rng.uniform(0.62, 0.88)), (lambda: rng.uniform(0.25, 0.75))
    if relation == "left of":
        return (near(), free()), (far(), free())
    if relation == "right of":
        return (far(), free()), (near(), free())
    if relation == "above":
        return (free(), near()), (free(), far())
    return (free(), far()), (free(), near())


def _noun(name: str, rng: random.Random, article: str) -> str:
    words = f"{rng.choice(COLOURS)} {name}" if rng.random() < 0.3 else name
    return f"{'an' if article == 'a' and words[0] in 'aeiou' else article} {words}"


def _box(centre: tuple[float, float], rng: random.Random) -> list[float]:
    w, h = rng.uniform(0.18, 0.3) * WIDTH, rng.uniform(0.18, 0.3) * HEIGHT
    return [round(centre[0] * WIDTH - w / 2, 2), round(centre[1] * HEIGHT - h / 2, 2), round(w, 2), round(h, 2)]


def synthetic_scene(rng: random.Random, relations: tuple[str, ...] = tuple(RELATION_TEMPLATES)) -> tuple[list[tuple[str, list[float]]], list[str]]:
    """Boxes (name, [x, y, w, h]) and two captions: a related pair, a distractor, and sometimes the sky."""
    subject, obj, distractor = rng.sample(SYNTHETIC_THINGS, 3)
    relation = rng.choice(relations)
    first, second = _centres(relation, rng)
    boxes = [(subject, _box(first, rng)), (obj, _box(second, rng)), (distractor, _box((rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)), rng))]
    captions = []
    for template in RELATION_TEMPLATES[relation]:
        caption = template.format(a=_noun(subject, rng, "a"), b=_noun(obj, rng, "the" if captions else "a"))
        captions.append((caption[0].upper() if rng.random() < 0.8 else caption[0]) + caption[1:] + ".")
    if rng.random() < 0.5:
        boxes.append(("sky-other", [0.0, 0.0, float(WIDTH), round(0.25 * HEIGHT, 2)]))
        captions[0] = captions[0][:-1] + " under the sky."
    return boxes, captions


def write_synthetic_coco(folder: str | Path, n_images: int = 200, seed: int = 0, relations: tuple[str, ...] = tuple(RELATION_TEMPLATES)) -> Path:
    """Write annotations/{captions,instances,stuff}_synthetic.json (COCO 2017 schema, no pixels); return the folder."""
    rng = random.Random(seed)
    folder = Path(folder)
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    things = [{"id": COCO_CLASSES.index(n) + 1, "name": n, "supercategory": "thing"} for n in SYNTHETIC_THINGS]
    stuff = [{"id": i, "name": n, "supercategory": "stuff"} for n, i in SYNTHETIC_STUFF.items()]
    thing_ids, stuff_ids = {c["name"]: c["id"] for c in things}, dict(SYNTHETIC_STUFF)
    images, instances, stuff_anns, captions = [], [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "width": WIDTH, "height": HEIGHT, "file_name": f"{image_id:012d}.jpg"})
        boxes, texts = synthetic_scene(rng, relations)
        for name, box in boxes:
            target, ids = (stuff_anns, stuff_ids) if name in stuff_ids else (instances, thing_ids)
            target.append({"id": len(instances) + len(stuff_anns) + 1, "image_id": image_id, "category_id": ids[name],
                           "bbox": box, "area": box[2] * box[3], "iscrowd": 0, "segmentation": []})
        captions += [{"id": len(captions) + k + 1, "image_id": image_id, "caption": text} for k, text in enumerate(texts)]
    info = {"description": "fidelity-book synthetic COCO-format layout set", "version": "1.0"}
    files = {"instances": (instances, things), "stuff": (stuff_anns, stuff), "captions": (captions, None)}
    for kind, (annotations, categories) in files.items():
        content = {"info": info, "licenses": [], "images": images, "annotations": annotations}
        if categories is not None:
            content["categories"] = categories
        (folder / "annotations" / f"{kind}_{SPLIT}.json").write_text(json.dumps(content), encoding="utf-8")
    return folder
