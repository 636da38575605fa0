"""Generate a prompt set's images with one method, resumably.

    python -m fidelity_lib.generate --method sd|ae|st|st+ae --prompts FILE|SET --seeds 0-63 --out DIR \\
        --profile smoke|tiny|toy|paper [--weights PATH] [--precision fp32|fp16] [--steps N] [--limit N] [--token-indices 2,5]

Images go to ``DIR/<method>/<prompt folder>/<seed>.png`` (the A&E metrics layout) and each finished image gets one
JSON line in ``DIR/manifest.jsonl``. An image is written to a temporary file and renamed into place, and its
manifest line is appended only after that, so an interrupted run leaves no partial PNG; re-running skips every
image that decodes and has its manifest line.

Scaling out: ``accelerate launch [--num_processes N] -m fidelity_lib.generate ...`` deals the (prompt, seed) items
round-robin to the processes (``accelerate.PartialState``); each writes its own images and its own
``manifest.part-<rank>.jsonl``, and at the end the main process merges the parts into ``manifest.jsonl`` (one line per
image, sorted by method, prompt set, prompt index, seed). One run per output folder: the main process holds
``DIR/.generate.lock`` and a second run is refused.

Methods are entries of ``METHODS`` (name -> function(pipe, record, seed, options) -> Generated); another method
plugs in with ``@register_method("name")``. A method may also register a batched form in ``BATCHED_METHODS``
(function(pipe, items, options) -> list[Generated]); ``--batch-size N`` then makes N images per call.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import PIL.Image
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, parse_flag_from_env
from tqdm import tqdm

from fidelity_lib.attend_excite import AttendExciteConfig, attend_and_excite_batch, model_config
from fidelity_lib.clip import ClipModel
from fidelity_lib.components import PRECISIONS, load_pipeline, shared_loss_clip, shipped_layout_predictor, shipped_layouts
from fidelity_lib.conditioning import Pipeline
from fidelity_lib.datasets import SET_NAMES, PromptRecord, load_prompts, prompt_folder_name
from fidelity_lib.files import append_json_lines, atomic_write_bytes, read_json_lines
from fidelity_lib.layout.predictor import LayoutPredictor, ObjectPlacement
from fidelity_lib.models import PROFILES, WeightsNotFoundError, clip_tokenizer
from fidelity_lib.prompts import check_prompt, check_prompt_length, check_token_indices
from fidelity_lib.spacetime import SpaceTimeConfig, spacetime_generate

MANIFEST_NAME = "manifest.jsonl"
PART_GLOB = "manifest.part-*.jsonl"
LOCK_NAME = ".generate.lock"


class InvalidSeedsError(ValueError):
    """A seed specification that is not 'N', 'A-B' (A <= B) or a comma-separated list of those."""


class OutputFolderError(OSError):
    """The output folder cannot be created or written to."""


class OutputLockedError(RuntimeError):
    """Another generator run holds the output folder's lock."""


class OtherWeightsError(ValueError):
    """The output folder holds this method's images from other weights: resuming would mix two models."""


@dataclass(frozen=True)
class GenerationOptions:
    """What every method receives besides the prompt and the seed."""

    steps: int = 50
    guidance_scale: float = 7.5
    token_indices: tuple[int, ...] | None = None  # overrides the prompt set's subject indices
    batch_size: int = 1  # images per call of a method that has a batched form (BATCHED_METHODS)
    image_size: int | None = None  # square image side; None: the model's default (512 SD 1.x, 768 768-v, 1024 SDXL)
    ae_config: AttendExciteConfig = field(default_factory=AttendExciteConfig)  # the ae and st+ae methods' A&E settings
    st_config: SpaceTimeConfig | None = None  # st and st+ae settings (None: SpaceTimeConfig()); steps and guidance from above
    layouts: Mapping[str, Sequence[ObjectPlacement]] | None = None  # stated layouts by prompt, used before the shipped ones
    # st and st+ae components; ``generate`` fills them from its profile (fidelity_lib.components) when left None
    loss_clip: ClipModel | None = None  # the CLIP of ST's loss
    layout_predictor: LayoutPredictor | None = None  # places the objects of prompts without a layout


def spacetime_options(options: GenerationOptions, records: Sequence[PromptRecord], profile: str) -> GenerationOptions:
    """``options`` with ST's components of ``profile``: its loss CLIP, its trained layout predictor if shipped, and the
    shipped layouts of the records' sets behind the stated ones."""
    shipped: dict[str, Sequence[ObjectPlacement]] = {}
    for set_name in dict.fromkeys(record.set_name for record in records if record.set_name):
        shipped |= shipped_layouts(set_name, profile)
    return replace(
        options,
        loss_clip=options.loss_clip or shared_loss_clip(profile),
        layout_predictor=options.layout_predictor or shipped_layout_predictor(profile),
        layouts={**shipped, **(options.layouts or {})},
    )


@dataclass
class Generated:
    """One method's output: the image, the settings that made it and method-specific manifest fields."""

    image: PIL.Image.Image
    config: dict
    extras: dict = field(default_factory=dict)


Method = Callable[[Pipeline, PromptRecord, int, GenerationOptions], Generated]
BatchedMethod = Callable[[Pipeline, Sequence[tuple[PromptRecord, int]], GenerationOptions], list[Generated]]
METHODS: dict[str, Method] = {}
BATCHED_METHODS: dict[str, BatchedMethod] = {}


def register_method(name: str) -> Callable[[Method], Method]:
    """Add a generation method under ``name`` (the ``--method`` value and the image folder)."""

    def register(function: Method) -> Method:
        METHODS[name] = function
        return function

    return register


@register_method("sd")
def generate_sd(pipe: Pipeline, record: PromptRecord, seed: int, options: GenerationOptions) -> Generated:
    """Plain Stable Diffusion through the pipeline itself."""
    return generate_sd_batch(pipe, [(record, seed)], options)[0]


def generate_sd_batch(pipe: Pipeline, items: Sequence[tuple[PromptRecord, int]], options: GenerationOptions) -> list[Generated]:
    """Plain SD for several (prompt, seed) items in one pipeline call, one CPU generator per image."""
    images = pipe(
        [record.prompt for record, _ in items],
        num_inference_steps=options.steps,
        guidance_scale=options.guidance_scale,
        generator=[torch.Generator("cpu").manual_seed(seed) for _, seed in items],
        height=options.image_size,
        width=options.image_size,
    ).images
    config = {"num_inference_steps": options.steps, "guidance_scale": options.guidance_scale, "image_size": options.image_size}
    return [Generated(image, config) for image in images]


BATCHED_METHODS["sd"] = generate_sd_batch


@register_method("ae")
def generate_ae(pipe: Pipeline, record: PromptRecord, seed: int, options: GenerationOptions) -> Generated:
    """Attend-and-Excite with ``options.ae_config`` (the paper's defaults unless told otherwise)."""
    return generate_ae_batch(pipe, [(record, seed)], options)[0]


def generate_ae_batch(pipe: Pipeline, items: Sequence[tuple[PromptRecord, int]], options: GenerationOptions) -> list[Generated]:
    """A&E for several (prompt, seed) items in one batch; subjects from the options, the prompt set or the nouns."""
    config = model_config(pipe, options.ae_config)  # the manifest records the resolution and normalisation that ran
    results = attend_and_excite_batch(
        pipe,
        [record.prompt for record, _ in items],
        [options.token_indices or record.subject_token_indices or None for record, _ in items],
        seeds=[seed for _, seed in items],
        config=config,
        num_inference_steps=options.steps,
        guidance_scale=options.guidance_scale,
        height=options.image_size,
        width=options.image_size,
    )
    settings = {"num_inference_steps": options.steps, "guidance_scale": options.guidance_scale,
                "image_size": options.image_size, **asdict(config)}
    return [Generated(result.image, settings, result.manifest_extras()) for result in results]


BATCHED_METHODS["ae"] = generate_ae_batch


def _generate_spacetime(pipe, record: PromptRecord, seed: int, options: GenerationOptions, method: str) -> Generated:
    if options.loss_clip is None:
        raise ValueError("ST needs its loss's CLIP: pass options.loss_clip (components.load_loss_clip), or use generate().")
    layout = (options.layouts or {}).get(record.prompt)
    config = replace(
        options.st_config or SpaceTimeConfig(), num_inference_steps=options.steps, guidance_scale=options.guidance_scale,
        attend_excite=model_config(pipe, options.ae_config),
    )
    indices = options.token_indices or record.subject_token_indices or None
    result = spacetime_generate(
        pipe, record.prompt, layout, seed=seed, config=config, clip_model=options.loss_clip, method=method,
        predictor=options.layout_predictor, token_indices=indices, image_size=options.image_size,
    )
    settings = asdict(config) | {"image_size": options.image_size}
    if method == "st":
        settings.pop("attend_excite")  # st runs no A&E
    return Generated(result.image, settings, result.manifest_extras())


@register_method("st")
def generate_st(pipe: Pipeline, record: PromptRecord, seed: int, options: GenerationOptions) -> Generated:
    """Spatial-temporal attention control: layout from the layout predictor, weights optimised through CLIP."""
    return _generate_spacetime(pipe, record, seed, options, "st")


@register_method("st+ae")
def generate_st_ae(pipe: Pipeline, record: PromptRecord, seed: int, options: GenerationOptions) -> Generated:
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


def manifest_part(out: str | os.PathLike, rank: int) -> Path:
    """The manifest lines process ``rank`` appends during a run; merged into manifest.jsonl at the end."""
    return Path(out) / f"manifest.part-{rank}.jsonl"


def _manifest_order(record: dict) -> tuple:
    method = record.get("method")
    rank = list(METHODS).index(method) if method in METHODS else len(METHODS)
    return rank, str(method), str(record.get("set")), int(record.get("index") or 0), int(record.get("seed") or 0)


def read_manifest(out: str | os.PathLike) -> list[dict]:
    """One record per image from manifest.jsonl and any unmerged parts (the latest line wins; torn lines ignored).

    Sorted by method (registry order), prompt set, prompt index and seed.
    """
    out = Path(out)
    sources = [path for path in [out / MANIFEST_NAME] if path.exists()] + sorted(out.glob(PART_GLOB))
    latest = {}
    for path in sources:
        for record in read_json_lines(path):
            latest[(record.get("method"), record.get("prompt"), record.get("seed"))] = record
    return sorted(latest.values(), key=_manifest_order)


def merge_manifest(out: str | os.PathLike) -> list[dict]:
    """Rewrite manifest.jsonl atomically with one line per existing image (``read_manifest``), then drop the parts."""
    out = Path(out)
    parts = sorted(out.glob(PART_GLOB))
    records = [record for record in read_manifest(out) if (out / str(record.get("path"))).is_file()]
    text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
    atomic_write_bytes(out / MANIFEST_NAME, text.encode("utf-8"))
    for part in parts:
        part.unlink(missing_ok=True)
    return records


def _write_image_atomically(image: PIL.Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def _remove_stale_temporaries(out: Path) -> None:
    for temporary in [*out.glob(".*.tmp"), *out.glob("*/*/.*.png.*.tmp")]:
        temporary.unlink(missing_ok=True)


def check_output(out: str | os.PathLike) -> None:
    """Raise OutputFolderError when ``out`` cannot become a writable folder; creates nothing."""
    path = Path(out).absolute()
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputFolderError(
            f"Cannot write images to {out}: {existing} is {'not a folder' if not existing.is_dir() else 'not writable'}; "
            f"pass --out (or out=) a folder you can create and write to."
        )


def prepare_output(out: str | os.PathLike) -> Path:
    """Create the output folder and check that files can be created in it; raise OutputFolderError otherwise."""
    out = Path(out)
    check_output(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise OutputFolderError(
            f"Cannot write images to {out} ({type(error).__name__}: {error.strerror or error}): "
            f"pass --out (or out=) a folder you can create and write to."
        ) from None
    return out


@contextmanager
def output_lock(out: Path, state: PartialState) -> Iterator[None]:
    """Hold ``out``'s lock on the main process; every process raises OutputLockedError when another run holds it."""
    handle, refusal = None, None
    if state.is_main_process:
        handle = open(out / LOCK_NAME, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            handle = None
            refusal = (
                f"Another generator run (pid {holder}) is writing {out}: wait for it to finish (it resumes and "
                f"merges its manifest itself), or pass a different --out."
            )
        else:
            handle.truncate(0)
            handle.write(str(os.getpid()))
            handle.flush()
            _remove_stale_temporaries(out)
    if state.num_processes > 1:
        refusal = broadcast_object_list([refusal])[0]
    if refusal is not None:
        raise OutputLockedError(refusal)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()


def process_state() -> PartialState:
    """accelerate's state for this process; without CUDA (or with ACCELERATE_USE_CPU=1) processes talk over gloo."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def work_items(records: Sequence[PromptRecord], seeds: Sequence[int], rank: int = 0, num_processes: int = 1) -> list[tuple[PromptRecord, int]]:
    """Process ``rank``'s (prompt, seed) items: every ``num_processes``-th of the prompt-major list, from ``rank``."""
    return [(record, seed) for record in records for seed in seeds][rank::num_processes]


def prompts_that_fit(records: Sequence[PromptRecord], tokenizer) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """Split records into those whose prompt fits the text encoder's window and those that do not."""
    fits = [len(tokenizer(record.prompt).input_ids) <= tokenizer.model_max_length for record in records]
    return [r for r, ok in zip(records, fits) if ok], [r for r, ok in zip(records, fits) if not ok]


def check_inputs(records: Sequence[PromptRecord], options: GenerationOptions, tokenizer=None) -> None:
    """Raise EmptyPromptError / PromptTooLongError / TokenIndexError before any image is generated."""
    tokenizer = tokenizer or clip_tokenizer()
    for record in records:
        check_prompt(record.prompt)
        check_prompt_length(tokenizer, record.prompt)
        indices = options.token_indices or record.subject_token_indices
        if indices:
            check_token_indices(tokenizer, record.prompt, indices)


@dataclass
class GenerationSummary:
    written: int
    skipped: int
    seconds: float


def generate(
    pipe: Pipeline,
    method: str,
    records: Sequence[PromptRecord],
    seeds: Sequence[int],
    out: str | os.PathLike,
    *,
    profile: str,
    options: GenerationOptions = GenerationOptions(),
    progress: bool = True,
    state: PartialState | None = None,
) -> GenerationSummary:
    """Make this process's share of the (prompt, seed) images that are not done yet, then merge the manifest."""
    if method not in METHODS:
        raise KeyError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    check_inputs(records, options)
    if method in ("st", "st+ae"):
        options = spacetime_options(options, records, profile)
    out = prepare_output(out)
    state = state or process_state()
    with output_lock(out, state):
        try:
            summary = _generate_share(pipe, method, records, seeds, out, profile, options, progress, state)
        finally:
            if state.num_processes == 1:
                merge_manifest(out)
        if state.num_processes > 1:
            state.wait_for_everyone()
            if state.is_main_process:
                merge_manifest(out)
    return summary


def _generate_share(pipe, method, records, seeds, out: Path, profile, options, progress, state) -> GenerationSummary:
    items = work_items(records, seeds, state.process_index, state.num_processes)
    manifest = read_manifest(out)
    weights = getattr(pipe, "weights_id", None)
    others = sorted({str(line.get("weights")) for line in manifest if line.get("method") == method and line.get("weights") != weights})
    if others:
        raise OtherWeightsError(
            f"{out} already holds {method} images made with {', '.join(others)}, not {weights}: resuming would mix "
            "models. Pass another output folder, or delete that one to start again."
        )
    done = {(line.get("method"), line.get("prompt"), line.get("seed")) for line in manifest}
    pending = [(r, s) for r, s in items if not ((method, r.prompt, s) in done and is_valid_image(image_path(out, method, r.prompt, s)))]
    part = manifest_part(out, state.process_index)
    start = time.perf_counter()
    batch_size = options.batch_size if method in BATCHED_METHODS else 1
    bar = tqdm(total=len(items), initial=len(items) - len(pending), desc=method, unit="img", disable=not (progress and state.is_main_process))
    for first in range(0, len(pending), batch_size):
        chunk = pending[first : first + batch_size]
        batch_start = time.perf_counter()
        if method in BATCHED_METHODS and batch_size > 1:
            outputs = BATCHED_METHODS[method](pipe, chunk, options)
        else:
            outputs = [METHODS[method](pipe, record, seed, options) for record, seed in chunk]
        seconds = (time.perf_counter() - batch_start) / len(chunk)
        for (record, seed), generated in zip(chunk, outputs):
            _write_image(out, part, method, record, seed, generated, profile, weights, seconds)
        bar.update(len(chunk))
    bar.close()
    return GenerationSummary(len(pending), len(items) - len(pending), time.perf_counter() - start)


def _write_image(out: Path, part: Path, method: str, record: PromptRecord, seed: int, generated: Generated, profile, weights, seconds: float) -> None:
    """The image, atomically, then its manifest line (so a listed image is always complete)."""
    path = image_path(out, method, record.prompt, seed)
    _write_image_atomically(generated.image, path)
    append_json_lines(
        part,
        [{
            "prompt": record.prompt,
            "set": record.set_name,
            "index": record.index,
            "seed": seed,
            "method": method,
            "path": str(path.relative_to(out)),
            "profile": profile,
            "weights": weights,
            "config": generated.config,
            "seconds": round(seconds, 4),
            "extras": generated.extras,
        }],
        sort_keys=True,
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


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
    parser.add_argument(
        "--precision", default="fp32", choices=sorted(PRECISIONS),
        help="paper profile: the weights' dtype (default fp32, as A&E's run.py; fp16 is faster, results may differ slightly)",
    )
    parser.add_argument("--steps", type=_positive_int, default=50, help="denoising steps (default 50)")
    parser.add_argument("--limit", type=_positive_int, help="only the first N prompts")
    parser.add_argument("--token-indices", type=_parse_indices, help="subject token indices for every prompt")
    parser.add_argument("--batch-size", type=_positive_int, default=1, help="images per call for methods with a batched form (ae)")
    parser.add_argument(
        "--skip-long-prompts",
        action="store_true",
        help="leave out prompts longer than the text encoder reads (e.g. the toy world's 14 tokens) before --limit; "
        "always on for the named prompt sets, whose prompts are fixed data",
    )
    args = parser.parse_args(argv)
    state = process_state()
    try:
        seeds = parse_seeds(args.seeds)
        records = load_prompts(args.prompts)
        skip_long_prompts = args.skip_long_prompts or args.prompts in SET_NAMES
        options = GenerationOptions(steps=args.steps, token_indices=args.token_indices, batch_size=args.batch_size)
        check_inputs(records if skip_long_prompts else records[: args.limit], options)
        check_output(args.out)
        pipe = load_pipeline(args.profile, weights=args.weights, device=state.device, precision=args.precision)
        if skip_long_prompts:
            records, skipped = prompts_that_fit(records, pipe.tokenizer)
            if skipped:
                print(f"skipping {len(skipped)} prompts longer than the {pipe.tokenizer.model_max_length - 2} tokens this "
                      f"text encoder reads", file=sys.stderr)
        records = records[: args.limit]
        check_inputs(records, options, pipe.tokenizer)
        summary = generate(pipe, args.method, records, seeds, args.out, profile=args.profile, options=options, state=state)
    except (ValueError, WeightsNotFoundError, OutputFolderError, OutputLockedError) as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    who = f"process {state.process_index}/{state.num_processes}: " if state.num_processes > 1 else ""
    print(
        f"{who}{summary.written} images written, {summary.skipped} already there, in {summary.seconds:.1f} s -> {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
