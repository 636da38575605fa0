"""Walk a generated-images folder (``<out>/<method>/<prompt_folder>/<seed>.png``) and open its images safely."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from collections.abc import Callable, Iterator

import pandas as pd
from PIL import Image, UnidentifiedImageError

from fidelity_lib.datasets import SET_NAMES, PromptRecord, find_record, load_prompt_set, prompt_folder_name
from fidelity_lib.stable import write_if_changed

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class NoImagesError(FileNotFoundError):
    """The folder holds no images for the requested dataset or methods."""


class UnknownMethodError(ValueError):
    """A requested method has no folder under the images folder."""


class UnknownPromptFolderError(ValueError):
    """A prompt folder matches no prompt of the dataset."""


@dataclass(frozen=True)
class ImageEntry:
    """One generated image: its method, prompt record, seed (the file stem) and path."""

    method: str
    record: PromptRecord
    seed: str
    path: Path

    @property
    def prompt(self) -> str:
        return self.record.prompt

    @property
    def folder(self) -> str:
        return self.path.parent.name


@dataclass(frozen=True)
class ImageProblem:
    """An image that could not be read, with the reason; metrics report it and leave it out of their means."""

    path: Path
    reason: str


def _seed_key(path: Path) -> tuple[int, int | str]:
    return (0, int(path.stem)) if path.stem.isdigit() else (1, path.stem)


def _images_in(folder: Path, listdir_order: bool) -> list[Path]:
    names = os.listdir(folder) if listdir_order else sorted(os.listdir(folder))
    paths = [folder / name for name in names if name.lower().endswith(IMAGE_SUFFIXES) and (folder / name).is_file()]
    return paths if listdir_order else sorted(paths, key=_seed_key)


@lru_cache(maxsize=None)
def _folders(dataset: str) -> dict[str, PromptRecord]:
    folders: dict[str, PromptRecord] = {}
    for record in load_prompt_set(dataset):
        folders.setdefault(prompt_folder_name(record.prompt), record)
    return folders


def _find(dataset: str, folder: Path) -> PromptRecord:
    try:
        return find_record(dataset, folder.name)
    except KeyError:
        raise UnknownPromptFolderError(
            f"{folder} matches no prompt of the {dataset} set (nor of any other set): was it named with "
            f"datasets.prompt_folder_name(prompt)?"
        ) from None


def list_methods(images_dir: str | Path) -> list[str]:
    """The method folders under ``images_dir``, sorted."""
    root = Path(images_dir)
    return sorted(path.name for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))


def collect_images(
    images_dir: str | Path, dataset: str, methods: list[str] | None = None, listdir_order: bool = False
) -> list[ImageEntry]:
    """Every image of ``dataset`` under ``images_dir``, in prompt-set order then seed order (or raw listdir order).

    Folders of other prompt sets are skipped. Raises a clear error for a missing or empty folder, an unknown dataset,
    a requested method without a folder, and a prompt folder that matches no prompt of any set.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise NoImagesError(f"Images folder {root} does not exist: generate images first (python -m fidelity_lib.generate).")
    by_folder = _folders(dataset)
    other_sets = {folder for name in SET_NAMES if name != dataset for folder in _folders(name)}
    available = list_methods(root)
    methods = available if methods is None else list(methods)
    missing = [method for method in methods if method not in available]
    if missing:
        raise UnknownMethodError(f"No folder for method(s) {missing} in {root}; found {available}.")
    entries = []
    for method in methods:
        method_entries = []
        folders = (root / method).iterdir()
        for folder in folders if listdir_order else sorted(folders):
            if not folder.is_dir() or folder.name.startswith(".") or (folder.name in other_sets and folder.name not in by_folder):
                continue  # another prompt set's images (the generation chapter writes every set into one folder)
            record = by_folder.get(folder.name) or _find(dataset, folder)
            method_entries += [ImageEntry(method, record, path.stem, path) for path in _images_in(folder, listdir_order)]
        if not listdir_order:
            method_entries.sort(key=lambda entry: (entry.record.index, _seed_key(entry.path)))
        entries += method_entries
    if not entries:
        raise NoImagesError(f"No {', '.join(IMAGE_SUFFIXES)} images for dataset {dataset!r} and methods {methods} in {root}.")
    return entries


def open_image(path: str | Path) -> Image.Image | ImageProblem:
    """The fully decoded RGB image, or an ImageProblem saying why it cannot be read (never raises for bad files)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        return ImageProblem(Path(path), f"{type(error).__name__}: {error}")


def iter_batches(
    entries: list[ImageEntry], batch_size: int
) -> Iterator[tuple[list[ImageEntry], list[Image.Image], list[tuple[ImageEntry, ImageProblem]]]]:
    """Read ``entries`` in chunks: (readable entries, their images, unreadable entries with their problems)."""
    for start in range(0, len(entries), batch_size):
        good, images, bad = [], [], []
        for entry in entries[start : start + batch_size]:
            image = open_image(entry.path)
            if isinstance(image, ImageProblem):
                bad.append((entry, image))
            else:
                good.append(entry)
                images.append(image)
        yield good, images, bad


def entry_row(entry: ImageEntry, error: str | None = None) -> dict:
    """The columns every metric frame starts with (one row per image, unreadable ones included with their error)."""
    return {
        "method": entry.method,
        "dataset": entry.record.set_name,
        "prompt_index": entry.record.index,
        "prompt": entry.record.prompt,
        "seed": entry.seed,
        "path": str(entry.path),
        "error": error,
    }


def problems_of(frame: pd.DataFrame) -> list[dict]:
    """The unreadable images of a metric frame as [{"path", "reason"}], for JSON outputs and reports."""
    bad = frame[frame["error"].notna()]
    return [{"path": path, "reason": reason} for path, reason in zip(bad["path"], bad["error"])]


@dataclass
class MetricResult:
    """A metric's per-image frame, its per-method aggregates (the original JSON keys, plus models and counts) and its output files."""

    frame: pd.DataFrame
    aggregates: dict[str, dict]
    files: list[Path] = field(default_factory=list)


def write_json(data: dict, path: Path) -> Path:
    """Write ``data`` as the original scripts do (sort_keys, indent 4), atomically, unless ``path`` holds the same
    numbers already (``stable.write_if_changed``)."""
    write_if_changed(path, json.dumps(data, sort_keys=True, indent=4).encode())
    return path


def score_cache_path(metrics_dir: str | Path | None, metric: str, settings: dict) -> Path | None:
    """Where a metric caches its per-image rows for these settings: ``<metrics_dir>/.cache/<metric>-<hash>.jsonl``."""
    if metrics_dir is None:
        return None
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(metrics_dir) / ".cache" / f"{metric}-{digest}.jsonl"


def _file_stamp(path: Path) -> str | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _read_score_cache(path: Path) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                item = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
            rows[f"{item['row']['path']}|{item['stamp']}"] = item["row"]
    return rows


def cached_frame(
    entries: list[ImageEntry], compute: Callable[[list[ImageEntry]], pd.DataFrame], cache_path: Path | None, chunk_size: int = 64
) -> pd.DataFrame:
    """``compute(entries)`` with readable images' rows cached per file (path, size, mtime), so a long evaluation resumes."""
    if cache_path is None:
        return compute(entries)
    cached = _read_score_cache(cache_path)
    stamps = {str(entry.path): _file_stamp(entry.path) for entry in entries}
    todo = [entry for entry in entries if f"{entry.path}|{stamps[str(entry.path)]}" not in cached]
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(todo), chunk_size):
        rows = compute(todo[start : start + chunk_size]).to_dict("records")
        with open(cache_path, "a", encoding="utf-8") as file:
            for row in rows:
                stamp = stamps[row["path"]]
                if row["error"] is None and stamp is not None:
                    file.write(json.dumps({"stamp": stamp, "row": row}) + "\n")
                cached[f"{row['path']}|{stamp}"] = row
            file.flush()
            os.fsync(file.fileno())
    return pd.DataFrame([cached[f"{entry.path}|{stamps[str(entry.path)]}"] for entry in entries])
