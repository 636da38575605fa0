"""Generate a prompt set's images with one method, resumably.

    python -m fidelity_lib.generate --method sd|ae|st|st+ae --prompts FILE|SET --seeds 0-63 --out DIR \\
        --profile smoke|tiny|toy|paper [--weights PATH] [--steps N] [--limit N] [--token-indices 2,5]

Images go to ``DIR/<method>/<prompt folder>/<seed>.png`` (the A&E metrics layout) and each finished image gets one
JSON line in ``DIR/manifest.jsonl``. An image is written to a temporary file and renamed into place, and its
manifest line is appended only after that, so an interrupted run leaves no partial PNG; re-running skips every
image that decodes and has its manifest line. One writer per output folder.

Methods are entries of ``METHODS`` (name -> function(pipe, record, seed, options) -> Generated); another method
plugs in with ``@register_method("name")``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import PIL.Image
import torch
from diffusers import StableDiffusionPipeline
from tqdm import tqdm

from fidelity_lib.attend_excite import (
    AttendExciteConfig,
    attend_and_excite,
    check_prompt,
    check_token_indices,
)
from fidelity_lib.datasets import PromptRecord, load_prompts, prompt_folder_name
from fidelity_lib.models import PROFILES, WeightsNotFoundError, clip_tokenizer, load_pipeline

MANIFEST_NAME = "manifest.jsonl"


class InvalidSeedsError(ValueError):
    """A seed specification that is not 'N', 'A-B' (A <= B) or a comma-separated list of those."""


@dataclass(frozen=True)
class GenerationOptions:
    """What every method receives besides the prompt and the seed."""

    steps: int = 50
    guidance_scale: float = 7.5
    token_indices: tuple[int, ...] | None = None  # overrides the prompt set's subject indices


@dataclass
class Generated:
    """One method's output: the image, the settings that made it and method-specific manifest fields."""

    image: PIL.Image.Image
    config: dict
    extras: dict = field(default_factory=dict)


Method = Callable[[StableDiffusionPipeline, PromptRecord, int, GenerationOptions], Generated]
METHODS: dict[str, Method] = {}


def register_method(name: str) -> Callable[[Method], Method]:
    """Add a generation method under ``name`` (the ``--method`` value and the image folder)."""

    def register(function: Method) -> Method:
        METHODS[name] = function
        return function

    return register


@register_method("sd")
def generate_sd(pipe: StableDiffusionPipeline, record: PromptRecord, seed: int, options: GenerationOptions) -> Generated:
    """Plain Stable Diffusion through the pipeline itself."""
    image = pipe(
        record.prompt,
        num_inference_steps=options.steps,
        guidance_scale=options.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    config = {"num_inference_steps": options.steps, "guidance_scale": options.guidance_scale}
    return Generated(image, config)


@register_method("ae")
def generate_ae(pipe: StableDiffusionPipeline, record: PromptRecord, seed: int, options: GenerationOptions) -> Generated:
    """Attend-and-Excite with the paper defaults; subjects from the options, the prompt set or the nouns."""
    config = AttendExciteConfig()
    indices = options.token_indices or record.subject_token_indices or None
    result = attend_and_excite(
        pipe,
        record.prompt,
        indices,
        seed=seed,
        config=config,
        num_inference_steps=options.steps,
        guidance_scale=options.guidance_scale,
    )
    settings = {"num_inference_steps": options.steps, "guidance_scale": options.guidance_scale, **asdict(config)}
    return Generated(result.image, settings, result.manifest_extras())


def _generate_spacetime(pipe, record: PromptRecord, seed: int, options: GenerationOptions, method: str) -> Generated:
    from fidelity_lib.spacetime import SpaceTimeConfig, spacetime_generate

    config = SpaceTimeConfig(num_inference_steps=options.steps, guidance_scale=options.guidance_scale)
    indices = options.token_indices or record.subject_token_indices or None
    result = spacetime_generate(pipe, record.prompt, seed=seed, config=config, method=method, token_indices=indices)
    return Generated(result.image, asdict(config), result.manifest_extras())


@register_method("st")
def generate_st(pipe: StableDiffusionPipeline, record: PromptRecord, seed: int, options: GenerationOptions) -> Generated:
    """Spatial-temporal attention control: layout from the layout predictor, weights optimised through CLIP."""
    return _generate_spacetime(pipe, record, seed, options, "st")


@register_method("st+ae")
def generate_st_ae(pipe: StableDiffusionPipeline, record: PromptRecord, seed: int, options: GenerationOptions) -> Generated:
    """Spatial-temporal control and Attend-and-Excite guidance in the same run."""
    return _generate_spacetime(pipe, record, seed, options, "st+ae")


def parse_seeds(text: str) -> list[int]:
    """'0-63' -> 0..63, '7' -> [7], '0-3,10' -> [0, 1, 2, 3, 10]."""
    seeds: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise InvalidSeedsError(f"Seeds {text!r}: {part!r} is not 'N' or 'A-B' with non-negative integers.") from None
        if low > high:
            raise InvalidSeedsError(f"Seeds {text!r}: the range {part!r} runs backwards; write {high}-{low}.")
        seeds.extend(range(low, high + 1))
    return list(dict.fromkeys(seeds))


def image_path(out: Path, method: str, prompt: str, seed: int) -> Path:
    """Where an image lives: ``out/<method>/<prompt folder>/<seed>.png``."""
    return Path(out) / method / prompt_folder_name(prompt) / f"{seed}.png"


def is_valid_image(path: Path) -> bool:
    """True when the file exists and decodes completely."""
    try:
        with PIL.Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def read_manifest(out: Path) -> list[dict]:
    """The manifest's records; a line cut short by a crash is ignored."""
    path = Path(out) / MANIFEST_NAME
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _write_image_atomically(image: PIL.Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            image.save(file, format="PNG")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _append_manifest_line(out: Path, record: dict) -> None:
    path = Path(out) / MANIFEST_NAME
    with open(path, "a+b") as file:
        file.seek(0, os.SEEK_END)
        if file.tell() > 0:
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":  # a previous run died mid-line
                file.write(b"\n")
        file.write((json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
        file.flush()
        os.fsync(file.fileno())


def _remove_stale_temporaries(out: Path, method: str) -> None:
    for temporary in (Path(out) / method).glob("*/.*.png.*.tmp"):
        temporary.unlink(missing_ok=True)


def check_inputs(records: Sequence[PromptRecord], options: GenerationOptions) -> None:
    """Raise EmptyPromptError / TokenIndexError before any image is generated."""
    tokenizer = clip_tokenizer()
    for record in records:
        check_prompt(record.prompt)
        indices = options.token_indices or record.subject_token_indices
        if indices:
            check_token_indices(tokenizer, record.prompt, indices)


@dataclass
class GenerationSummary:
    written: int
    skipped: int
    seconds: float


def generate(
    pipe: StableDiffusionPipeline,
    method: str,
    records: Sequence[PromptRecord],
    seeds: Sequence[int],
    out: str | os.PathLike,
    *,
    profile: str,
    options: GenerationOptions = GenerationOptions(),
    progress: bool = True,
) -> GenerationSummary:
    """Make every (prompt, seed) image with ``method`` that is not already done; see the module docstring."""
    if method not in METHODS:
        raise KeyError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_inputs(records, options)
    _remove_stale_temporaries(out, method)
    done = {(line.get("method"), line.get("prompt"), line.get("seed")) for line in read_manifest(out)}
    start = time.perf_counter()
    written = skipped = 0
    with tqdm(total=len(records) * len(seeds), desc=method, unit="img", disable=not progress) as bar:
        for record in records:
            for seed in seeds:
                path = image_path(out, method, record.prompt, seed)
                if (method, record.prompt, seed) in done and is_valid_image(path):
                    skipped += 1
                    bar.update()
                    continue
                image_start = time.perf_counter()
                generated = METHODS[method](pipe, record, seed, options)
                seconds = time.perf_counter() - image_start
                _write_image_atomically(generated.image, path)
                _append_manifest_line(
                    out,
                    {
                        "prompt": record.prompt,
                        "set": record.set_name,
                        "index": record.index,
                        "seed": seed,
                        "method": method,
                        "path": str(path.relative_to(out)),
                        "profile": profile,
                        "weights": getattr(pipe, "weights_id", None),
                        "config": generated.config,
                        "seconds": round(seconds, 4),
                        "extras": generated.extras,
                    },
                )
                written += 1
                bar.update()
    return GenerationSummary(written, skipped, time.perf_counter() - start)


def _parse_indices(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"token indices must be comma-separated integers, not {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=sorted(METHODS))
    parser.add_argument("--prompts", required=True, help="a set name (ae_animal_animal, ...) or a text file")
    parser.add_argument("--seeds", default="0-63", help="e.g. 0-63, 7 or 0-3,10 (default 0-63)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--profile", default="smoke", choices=PROFILES)
    parser.add_argument("--weights", help="paper profile: a weights folder or a repo id in the local cache")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    parser.add_argument("--limit", type=int, help="only the first N prompts")
    parser.add_argument("--token-indices", type=_parse_indices, help="subject token indices for every prompt")
    args = parser.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
        records = load_prompts(args.prompts)[: args.limit]
        options = GenerationOptions(steps=args.steps, token_indices=args.token_indices)
        check_inputs(records, options)
        pipe = load_pipeline(args.profile, weights=args.weights)
        summary = generate(pipe, args.method, records, seeds, args.out, profile=args.profile, options=options)
    except (ValueError, WeightsNotFoundError) as error:  # InvalidSeedsError, UnknownPromptSetError, TokenIndexError
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    print(
        f"{summary.written} images written, {summary.skipped} already there, in {summary.seconds:.1f} s -> {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
