"""A CPU rehearsal of the paper book (``make rehearse``): every chapter, set and method on random-weight stand-ins.

    python -m fidelity_lib.rehearsal [--out reports-rehearsal/] [--work DIR]

It writes the stand-ins (``fidelity_lib.standins``: each real model's structure at reduced widths, under its real repo
id) into a temporary Hugging Face cache, weights folder and COCO folder, runs

    python -m fidelity_lib.book --profile paper --scale quick --weights <folder> --coco-dir <folder> --out <out>

with ``HF_HUB_OFFLINE=1`` and, where the machine allows (``unshare -rn``), with no network but loopback. It kills that
run (the runner and its kernel, SIGKILL) once chapter 2 has made KILL_AFTER_IMAGES images, runs the same command again,
and checks that the rerun skipped the finished chapters and made none of the finished images again, that both
paper-shaped tables hold every paper set with every method, and that every artefact's provenance says ``paper`` and
names the quick scale.
Every number it writes is noise: it tests that the paper book runs, not what it finds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil

from fidelity_lib.chapters import METHODS
from fidelity_lib.datasets import PAPER_SET_NAMES
from fidelity_lib.files import read_json_lines
from fidelity_lib.generate import MANIFEST_NAME

REPO_ROOT = Path(__file__).resolve().parent.parent
REHEARSAL_DIR = REPO_ROOT / "reports-rehearsal"
PAPER_TABLES = ("paper_attend_excite", "paper_spatial_temporal")
KILL_AFTER_IMAGES = 6  # chapter 2's images before the kill: past the first method of the first set
CHAPTERS_BEFORE_THE_KILL = ("00_setup", "01_layout")


class RehearsalFailed(RuntimeError):
    """The paper book failed on the stand-ins, or wrote tables that miss a set, a method or the paper profile."""


NO_NETWORK = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "no-network"]  # Jupyter needs loopback


def offline_prefix() -> list[str]:
    """NO_NETWORK (a new user and network namespace holding only loopback) where the machine allows it, else []."""
    if shutil.which("unshare") and subprocess.run([*NO_NETWORK, "true"], capture_output=True).returncode == 0:
        return NO_NETWORK
    return []


def book_command(weights_dir: Path, coco_dir: Path, out: Path) -> list[str]:
    """The paper book at the quick scale on the stand-in folders, as a user would run it."""
    return [sys.executable, "-m", "fidelity_lib.book", "--profile", "paper", "--scale", "quick",
            "--weights", str(weights_dir), "--coco-dir", str(coco_dir), "--out", str(out)]


def rehearsal_problems(out: Path) -> list[str]:
    """What the rehearsal's reports miss: a paper table, a (set, method) row, images in a row, or a provenance that says
profile paper and the quick scale."""
    problems = []
    expected = {(name, method) for name in PAPER_SET_NAMES for method in METHODS}
    found = set()
    for table in PAPER_TABLES:
        path = out / "tables" / f"{table}.csv"
        if not path.is_file():
            problems.append(f"{path} was not written")
            continue
        rows = pd.read_csv(path)
        found |= set(zip(rows["set"], rows["method"]))
        problems += [f"{table}: {row.set} {row.method} has {row.images} images" for row in rows.itertuples() if row.images < 1]
    problems += [f"no row for {name} with {method}" for name, method in sorted(expected - found)]
    records = sorted(out.glob("**/*.provenance.json"))
    if not records:
        problems.append(f"no provenance record under {out}")
    for path in records:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("profile") != "paper":
            problems.append(f"{path.relative_to(out)} says profile {record.get('profile')!r}, not 'paper'")
        if "scale quick" not in record.get("notes", ""):
            problems.append(f"{path.relative_to(out)} does not say that it ran at the quick scale")
    return problems


def images_dir(out: Path) -> Path:
    """Where chapter 2 of the paper book writes its images and manifest."""
    return out / "images" / "paper"


def finished_images(out: Path) -> dict[Path, int]:
    """Every image chapter 2 has made so far, with its modification time in nanoseconds."""
    return {path: path.stat().st_mtime_ns for path in sorted(images_dir(out).glob("*/*/*.png"))}


def manifest_lines(out: Path) -> list[dict]:
    """chapter 2's manifest lines as written, one per image made (unlike read_manifest, which keeps the latest)."""
    path = images_dir(out) / MANIFEST_NAME
    return read_json_lines(path) if path.is_file() else []


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a process and all its descendants (the book runner, papermill and the chapter's kernel)."""
    try:
        tree = [process, *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()


def run_until_images(command: list[str], env: dict, out: Path, images: int) -> None:
    """Run the book until chapter 2's manifest holds ``images`` lines, then kill it; RehearsalFailed if it ended first."""
    process = subprocess.Popen(command, env=env, cwd=REPO_ROOT)
    while process.poll() is None and len(manifest_lines(out)) < images:
        time.sleep(0.5)
    if process.poll() is not None:
        raise RehearsalFailed(f"the paper book ended (status {process.returncode}) before chapter 2 made {images} images")
    kill_tree(process)
    print(f"[rehearse] killed the book in chapter 2 after {len(manifest_lines(out))} images", flush=True)


def resume_problems(out: Path, before: dict[Path, int], chapters_before: dict[str, int]) -> list[str]:
    """What the rerun did again: a chapter finished before the kill, or an image made before it."""
    problems = [f"{stem} ran again after the kill" for stem, mtime in chapters_before.items()
                if (out / "notebooks" / f"{stem}.ipynb").stat().st_mtime_ns != mtime]
    problems += [f"{path.relative_to(out)} was made again" for path, mtime in before.items()
                 if not path.is_file() or path.stat().st_mtime_ns != mtime]
    counts = pd.Series([(line["method"], line["prompt"], line["seed"]) for line in manifest_lines(out)]).value_counts()
    problems += [f"{key} has {count} manifest lines" for key, count in counts.items() if count > 1]
    return problems


def rehearse(out: Path = REHEARSAL_DIR, work: Path | None = None) -> float:
    """Write the stand-ins into ``work`` (a temporary folder if None), run the quick paper book into ``out`` offline,
    kill it in chapter 2 and run it again, check its reports; return the seconds of both runs or raise RehearsalFailed."""
    from fidelity_lib.standins import write_standins

    work, out = Path(work or tempfile.mkdtemp(prefix="rehearsal-")), Path(out).resolve()
    if out.exists():
        shutil.rmtree(out)  # a rehearsal starts from nothing, so that the kill lands in chapter 2
    hf_home, weights_dir, coco_dir = work / "hf", work / "weights" / "stable-diffusion-v1-4", work / "coco"
    print(f"[rehearse] writing the stand-ins into {work} ...", flush=True)
    for component, written in write_standins(hf_home, weights_dir, coco_dir).items():
        print(f"[rehearse]   {component}: {written}", flush=True)
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    prefix = offline_prefix()
    print(f"[rehearse] network: {'none, loopback only (unshare -rn)' if prefix else 'present (unshare -rn refused): HF_HUB_OFFLINE=1 only'}")
    command = prefix + book_command(weights_dir, coco_dir, out)
    print(f"[rehearse] {' '.join(command)}", flush=True)
    start = time.perf_counter()
    run_until_images(command, env, out, KILL_AFTER_IMAGES)
    before = finished_images(out)
    chapters_before = {stem: (out / "notebooks" / f"{stem}.ipynb").stat().st_mtime_ns for stem in CHAPTERS_BEFORE_THE_KILL}
    print("[rehearse] the same command again, to resume ...", flush=True)
    if subprocess.run(command, env=env, cwd=REPO_ROOT).returncode != 0:
        raise RehearsalFailed("the paper book failed on the stand-ins (its output is above)")
    seconds = time.perf_counter() - start
    problems = resume_problems(out, before, chapters_before) + rehearsal_problems(out)
    if problems:
        raise RehearsalFailed("the paper book ran but:\n  " + "\n  ".join(problems))
    print(f"[rehearse] resumed after the kill: {len(before)} images made before it were kept, not made again")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REHEARSAL_DIR, help="where the book's reports go")
    parser.add_argument("--work", type=Path, help="where the stand-ins go (default: a temporary folder, removed after)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="rehearsal-"))
    try:
        seconds = rehearse(args.out, work)
    except RehearsalFailed as failure:
        print(f"[rehearse] FAILED: {failure}", file=sys.stderr)
        return 1
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"[rehearse] passed: the paper book ran every chapter on the stand-ins in {seconds:.0f} s (kill and rerun); "
          f"both paper tables hold {len(PAPER_SET_NAMES)} sets x {len(METHODS)} methods; every provenance says paper, scale quick.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
