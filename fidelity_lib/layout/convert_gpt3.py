"""Convert the official layout-training sentences ``LT/data/gpt-3.pkl`` into ``data/st_attn/gpt-3.jsonl``.

Run once, where the pickle is: ``python -m fidelity_lib.layout.convert_gpt3 path/to/gpt-3.pkl``. The pickle is a list
of 2000 items ``[sentence, word_tokens, head_token_indices, relations, noun_phrases]`` (COCODataset.py L286-339); each
becomes one JSON object with those five fields, named, in the same order. The book reads only the JSON lines.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

from fidelity_lib.datasets import DATA_DIR, RELATION_WORDS

GPT3_FIELDS = ("sentence", "tokens", "head_indices", "relations", "noun_phrases")  # the pickle's item, in its order
GPT3_JSONL = DATA_DIR / "st_attn" / "gpt-3.jsonl"


def gpt3_rows(items: list) -> list[dict]:
    """The pickle's items as dicts of GPT3_FIELDS, each checked: tokens join to the sentence, indices and relations valid."""
    rows = []
    for number, item in enumerate(items):
        if not isinstance(item, list | tuple) or len(item) != len(GPT3_FIELDS):
            raise ValueError(f"gpt-3.pkl item {number} is not a list of the {len(GPT3_FIELDS)} fields {GPT3_FIELDS}.")
        row = dict(zip(GPT3_FIELDS, item))
        row["relations"] = [list(relation) for relation in row["relations"]]
        problems = []
        if "".join(row["tokens"]) != row["sentence"]:
            problems.append("its tokens do not join to its sentence")
        if len(row["head_indices"]) != len(row["noun_phrases"]):
            problems.append("it has not one noun phrase per head index")
        if any(not 0 <= index < len(row["tokens"]) for index in row["head_indices"]):
            problems.append("a head index lies outside its tokens")
        if any(s not in row["head_indices"] or o not in row["head_indices"] or word not in RELATION_WORDS
               for s, o, word in row["relations"]):
            problems.append(f"a relation names no head index or a word outside {RELATION_WORDS}")
        if problems:
            raise ValueError(f"gpt-3.pkl item {number} ({row['sentence']!r}): {'; '.join(problems)}.")
        rows.append(row)
    return rows


def convert(pickle_path: str | Path, out: str | Path = GPT3_JSONL) -> Path:
    """Write the pickle's items as JSON lines (UTF-8, one object per line, the pickle's order); return ``out``."""
    items = pickle.loads(Path(pickle_path).read_bytes())  # the official file: plain lists, strings and ints
    rows = gpt3_rows(items)
    out = Path(out)
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return out


def main() -> None:
    """Command line: the pickle's path, optionally the output path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pickle_path", help="LayoutTransformer/data/gpt-3.pkl of Diffusion-SpaceTime-Attn")
    parser.add_argument("--out", default=str(GPT3_JSONL), help=f"the JSON lines file (default {GPT3_JSONL})")
    args = parser.parse_args()
    print(f"wrote {convert(args.pickle_path, args.out)}")


if __name__ == "__main__":
    main()
