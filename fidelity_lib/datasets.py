"""The papers' prompt sets, with the objects and relations their evaluations check.

Set names used everywhere: ``ae_animal_animal``, ``ae_animal_object``, ``ae_object_object`` (Attend-and-Excite,
276 prompts) and ``gpt``, ``mscoco``, ``vsr`` (spatial-temporal attention, 500 each). The files live in ``data/`` with
their MIT licences. Object names follow the original evaluation scripts (``SD/evaluation/detector_result_*.py``).

Each paper set has a toy counterpart (``TOY_SETS``, ``toy_<name>``) generated from the toy world's caption grammar,
with the same record fields; every toy record carries ``extra["split"]``, "dev" or "held_out" (``TOY_SPLIT_SEEDS``
gives each split its seeds), so settings are tuned on one half of the prompts and seeds and reported on the other.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fidelity_lib.toyworld.scenes import COLOURS, RELATION_FORMS, RELATIONS, SHAPES, parse_caption

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
AE_SETS = {"ae_animal_animal": "animal_animal", "ae_animal_object": "animal_object", "ae_object_object": "object_object"}
ST_SETS = ("gpt", "mscoco", "vsr")
PAPER_SET_NAMES = (*AE_SETS, *ST_SETS)
TOY_SETS = {  # toy set -> the paper set it stands for
    "toy_ae_shape_shape": "ae_animal_animal",
    "toy_ae_shape_object": "ae_animal_object",
    "toy_ae_object_object": "ae_object_object",
    "toy_gpt": "gpt",
    "toy_mscoco": "mscoco",
    "toy_vsr": "vsr",
    "toy_one_object": None,  # a control: one object per prompt, where the toy world should not neglect
}
TOY_AE_SETS = ("toy_ae_shape_shape", "toy_ae_shape_object", "toy_ae_object_object")
TOY_RELATION_SETS = ("toy_gpt", "toy_vsr")
TOY_SPLIT_SEEDS = {"dev": range(0, 10_000), "held_out": range(100_000, 110_000)}  # disjoint seed ranges per split
TOY_SET_SEED = 2023  # fixes which prompts each toy set samples and which half of them is held out
SET_NAMES = (*PAPER_SET_NAMES, *TOY_SETS)
TOY_COUNTERPARTS = {paper: toy for toy, paper in TOY_SETS.items() if paper is not None}  # "mscoco" -> "toy_mscoco"
AE_COLOURS = ("black", "blue", "brown", "gray", "green", "orange", "pink", "purple", "red", "white", "yellow")
RELATION_WORDS = ("left of", "right of", "above", "below")

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # the 80 COCO 2017 thing classes in id order
# The original scripts drop these four classes (detector_result_*.py L17-93): their detections are ignored.
EXCLUDED_CLASSES = ("traffic light", "fire hydrant", "stop sign", "parking meter")
EVAL_CLASSES = tuple(name for name in COCO_CLASSES if name not in EXCLUDED_CLASSES)
TWO_WORD_CLASSES = (
    "hair drier", "teddy bear", "cell phone", "dining table", "potted plant", "hot dog", "wine glass",
    "tennis racket", "baseball glove", "baseball bat", "sports ball",
)  # the GPT scripts keep these as two-word names


@dataclass(frozen=True)
class Relation:
    """``subject`` is ``relation`` ``object``, e.g. cup left of knife (relation in RELATION_WORDS)."""

    subject: str
    relation: str
    object: str


@dataclass(frozen=True)
class PromptRecord:
    set_name: str
    index: int
    prompt: str
    objects: tuple[str, ...]  # names the evaluation looks for (detector class names or subject nouns)
    phrases: tuple[str, ...] = ()  # the objects with their attributes ("white couch"), for local prompts
    relations: tuple[Relation, ...] = ()
    subject_token_indices: tuple[int, ...] = ()  # CLIP token positions of the subjects (A&E sets)
    eot_index: int | None = None  # position of <|endoftext|> (SD 2.x normalisation)
    extra: dict = field(default_factory=dict, compare=False)


class UnknownPromptSetError(ValueError):
    pass


def evaluation_name(phrase: str) -> str:
    """The GPT scripts' object name: the last word, or the last two if they form a two-word COCO class."""
    words = phrase.strip().split()
    last_two = " ".join(words[-2:])
    return last_two if last_two in TWO_WORD_CLASSES else words[-1]


def _load_ae_set(name: str) -> list[PromptRecord]:
    rows = (DATA_DIR / "attend_and_excite" / "token_indices.tsv").read_text().splitlines()[1:]
    records = []
    for row in rows:
        set_name, prompt, indices, eot_index = row.split("\t")
        if set_name != AE_SETS[name]:
            continue
        words = prompt.split()
        subject_token_indices = tuple(int(i) for i in indices.split(","))
        subjects = tuple(words[i - 1] for i in subject_token_indices)  # every word is one CLIP token here
        phrases = tuple(" ".join(words[i - 2 : i]) if words[i - 2] in AE_COLOURS else words[i - 1] for i in subject_token_indices)
        records.append(
            PromptRecord(name, len(records), prompt, subjects, phrases, (), subject_token_indices, int(eot_index))
        )
    return records


def _parse_relation(text: str) -> Relation:
    found = [(text.find(f" {word} "), word) for word in RELATION_WORDS if f" {word} " in text]
    if not found:
        raise ValueError(f"no relation word in {text!r}")
    position, word = max(found)  # the original takes the last keyword found
    return Relation(evaluation_name(text[:position]), word, evaluation_name(text[position + len(word) + 2 :]))


def _load_gpt() -> list[PromptRecord]:
    lines = (DATA_DIR / "st_attn" / "gpt.txt").read_text().split("\n")
    records = []
    for start in range(0, len(lines) - 3, 4):
        phrases = tuple(p.strip() for p in lines[start].removeprefix("Objects: ").split(","))
        relations = tuple(_parse_relation(r.strip()) for r in lines[start + 1].removeprefix("Relation: ").split(","))
        sentence = lines[start + 2].removeprefix("Sentence: ").strip()
        records.append(
            PromptRecord("gpt", len(records), sentence, tuple(evaluation_name(p) for p in phrases), phrases, relations)
        )
    return records


def _mscoco_class(phrase: str) -> str | None:
    """The original's rule: the first of the 76 class names (COCO id order) that is a substring of the phrase."""
    return next((name for name in EVAL_CLASSES if name in phrase), None)


def _load_mscoco() -> list[PromptRecord]:
    items = pickle.loads((DATA_DIR / "st_attn" / "mscoco.pkl").read_bytes())
    records = []
    for index, (sentence, _tokens, _heads, _relations, phrases) in enumerate(items):
        objects = tuple(sorted({name for name in map(_mscoco_class, phrases) if name is not None}))
        records.append(PromptRecord("mscoco", index, sentence.strip(), objects, tuple(phrases)))
    return records


def _load_vsr() -> list[PromptRecord]:
    items = pickle.loads((DATA_DIR / "st_attn" / "vsr.pkl").read_bytes())
    renamed = {"at the right side of": "right of", "at the left side of": "left of"}
    records = []
    for index, (sentence, _tokens, _heads, relations, phrases) in enumerate(items):
        objects = tuple(phrase[4:] for phrase in phrases)  # strip "The " / "the "
        relation = renamed.get(relations[0][2], relations[0][2])
        records.append(
            PromptRecord("vsr", index, sentence.strip(), objects, objects, (Relation(objects[0], relation, objects[1]),))
        )
    return records


def toy_record(set_name: str, index: int, caption: str, split: str) -> PromptRecord:
    """A toy caption as a record: objects, phrases, relation and the nouns as subject tokens, from the grammar."""
    parsed = parse_caption(caption)
    relations = ()
    if parsed.relation is not None:
        first, second = parsed.objects[:2]
        relations = (Relation(first, parsed.relation.removeprefix("to the "), second),)
    words = caption.replace(",", " ,").split()
    return PromptRecord(
        set_name, index, caption, parsed.objects, parsed.objects, relations,
        tuple(mention.noun_index for mention in parsed.mentions), len(words) + 1, {"split": split},
    )


def _toy_captions(name: str) -> list[str]:
    """Every caption of a toy set, in a fixed order (the relation and list sets are fixed random samples)."""
    coloured = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
    pairs = [(a, b) for a in coloured for b in coloured if a.split()[0] != b.split()[0]]
    rng = np.random.default_rng(TOY_SET_SEED)
    if name == "toy_one_object":
        return [f"a {name}" for name in coloured + list(SHAPES)]
    if name == "toy_ae_shape_shape":
        return [f"a {a} {joiner} a {b}" for a in SHAPES for b in SHAPES if a != b for joiner in ("and", "with")]
    if name == "toy_ae_shape_object":
        shape_first = [f"a {a} and a {b}" for a in SHAPES for b in coloured if b.split()[1] != a]
        return shape_first + [f"a {b} and a {a}" for a in SHAPES for b in coloured if b.split()[1] != a]
    if name == "toy_ae_object_object":
        return [f"a {a} and a {b}" for a, b in pairs]
    if name in ("toy_gpt", "toy_vsr"):
        forms = RELATION_FORMS if name == "toy_gpt" else RELATION_FORMS[1:2]  # VSR: "the A is <relation> the B"
        every = [
            form.format(a=f"a {a}", b=f"a {b}", the_a=f"the {a}", the_b=f"the {b}", relation=relation)
            for a, b in pairs for relation in RELATIONS for form in forms
        ]
        return [every[i] for i in sorted(rng.choice(len(every), size=120, replace=False))]
    lists = [f"a {a}, a {b} and a {c}" for a, b in pairs for c in coloured if c.split()[0] not in (a.split()[0], b.split()[0])]
    chosen = [lists[i] for i in sorted(rng.choice(len(lists), size=60, replace=False))]
    return chosen + [f"a {pairs[i][0]} and a {pairs[i][1]}" for i in sorted(rng.choice(len(pairs), size=60, replace=False))]


def load_toy_set(name: str) -> list[PromptRecord]:
    """A toy set's records; a fixed random half of the prompts is "held_out", the rest "dev"."""
    captions = _toy_captions(name)
    held_out = set(np.random.default_rng([TOY_SET_SEED, len(captions)]).permutation(len(captions))[: len(captions) // 2].tolist())
    return [toy_record(name, i, caption, "held_out" if i in held_out else "dev") for i, caption in enumerate(captions)]


def split_records(records: list[PromptRecord], split: str) -> list[PromptRecord]:
    """The records of one split ("dev" or "held_out") of a toy set."""
    if split not in TOY_SPLIT_SEEDS:
        raise ValueError(f"Unknown split {split!r}: choose one of {', '.join(TOY_SPLIT_SEEDS)}.")
    return [record for record in records if record.extra.get("split") == split]


def load_prompt_set(name: str) -> list[PromptRecord]:
    """One of SET_NAMES, in the original order."""
    if name in AE_SETS:
        return _load_ae_set(name)
    if name in TOY_SETS:
        return load_toy_set(name)
    loaders = {"gpt": _load_gpt, "mscoco": _load_mscoco, "vsr": _load_vsr}
    if name not in loaders:
        raise UnknownPromptSetError(f"Unknown prompt set {name!r}: choose one of {', '.join(SET_NAMES)}, or pass a text file.")
    return loaders[name]()


def set_for_profile(name: str, resolved_profile: str) -> str:
    """The set a chapter runs for ``name``: in the toy profile a paper set's toy counterpart (mscoco -> toy_mscoco), since
    the toy world knows only coloured shapes; in every other profile, and for a toy set, ``name`` itself."""
    if name not in SET_NAMES:
        raise UnknownPromptSetError(f"Unknown prompt set {name!r}: choose one of {', '.join(SET_NAMES)}.")
    return TOY_COUNTERPARTS.get(name, name) if resolved_profile == "toy" else name


def book_records(set_names: list[str], limit: int | None = None) -> list[PromptRecord]:
    """The first ``limit`` prompts of each set that a chapter shows: a toy set's held-out split (its dev split chose the
    toy settings), a paper set in its original order."""
    chosen = []
    for name in set_names:
        records = load_prompt_set(name)
        chosen += (split_records(records, "held_out") if name in TOY_SETS else records)[:limit]
    return chosen


def load_prompts(source: str | Path) -> list[PromptRecord]:
    """A set name, or a text file with one prompt per line (blank lines and '#' comments skipped)."""
    if str(source) in SET_NAMES:
        return load_prompt_set(str(source))
    path = Path(source)
    if not path.is_file():
        raise UnknownPromptSetError(
            f"{source!r} is neither a prompt set ({', '.join(SET_NAMES)}) nor an existing text file."
        )
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"{path} holds no prompts: write one prompt per line.")
    return [PromptRecord(path.stem, index, prompt, ()) for index, prompt in enumerate(prompts)]


MAX_FOLDER_CHARS = 120


def prompt_folder_name(prompt: str) -> str:
    """The image folder of a prompt: the prompt itself (the A&E metrics layout), made safe and short when needed."""
    safe = prompt.strip().replace("/", "_").replace("\\", "_").lstrip(".")
    if safe == prompt and len(prompt.encode()) <= MAX_FOLDER_CHARS:
        return prompt
    digest = hashlib.sha1(prompt.encode()).hexdigest()[:8]
    return f"{safe[:MAX_FOLDER_CHARS].rstrip()}~{digest}"


def find_record(set_name: str, prompt_or_folder: str) -> PromptRecord:
    """The record of a prompt (or of its image folder name) in a set; metrics use it to find an image's objects."""
    for record in load_prompts(set_name):
        if prompt_or_folder in (record.prompt, prompt_folder_name(record.prompt)):
            return record
    raise KeyError(f"{prompt_or_folder!r} is not a prompt of the {set_name} set (nor the folder name of one).")
