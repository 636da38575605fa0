"""The book runner: sync the jupytext pairs, then run every notebook in number order with papermill.

    python -m fidelity_lib.book [--profile smoke|paper] [--only NAME] [--out reports/]
    python -m fidelity_lib.book --profile paper --weights W --coco-dir C [--captioner transformers|lavis]
                                [--scale paper|quick] [--out reports-paper/] [--check] [--rerun]

Executed notebooks go to ``<out>/notebooks/`` without run metadata or stderr, rewritten only when their content
changes (``fidelity_lib.stable``: the smoke book's are committed); the notebooks themselves write tables and figures under ``<out>/``.
The run stops at the first failing notebook, keeps the failed executed notebook and prints its path.

The paper profile first checks every component its chapters load (``fidelity_lib.preflight``) and stops, having
written nothing, if one is missing (``--check``: only that). Each run parameter goes to every chapter whose parameters
cell declares it, under the same name (``-p weights``, ``-p coco_dir``, ``-p captioner``, ``-p scale`` for papermill
users). A paper run resumes: a chapter that finished with the same parameters is not run again (``--rerun`` runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fidelity_lib.stable import stable_notebook, write_if_changed

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
REPORTS_DIR = REPO_ROOT / "reports"
KERNEL_NAME = "fidelity-book"
NOTEBOOK_NAME = re.compile(r"^(\d\d)_[\w-]+\.ipynb$")
SMOKE_THREADS = 1  # torch threads of every non-paper chapter kernel (kernel_threads)
# What the book passes to a chapter beyond profile, reports_dir and the run's parameters: chapter 4 scores every set
# of the papers' tables (on the toy world, their toy counterparts) with all four methods, so that chapter 5 can
# rebuild those tables.
CHAPTER_PARAMETERS = {
    "04_eval": {
        "dataset": ["ae_animal_animal", "ae_animal_object", "ae_object_object", "gpt", "mscoco"],
        "methods": ["sd", "ae", "st", "st+ae"],
        "limit": 2,  # prompts per set when images are missing: those of chapter 2, so only new sets cost images
    },
}
# The paper book: chapter 4 scores all six sets, each with the prompts and seeds chapter 2 made at the run's scale.
PAPER_CHAPTER_PARAMETERS = {
    "04_eval": {
        "dataset": ["ae_animal_animal", "ae_animal_object", "ae_object_object", "gpt", "mscoco", "vsr"],
        "methods": ["sd", "ae", "st", "st+ae"],
        "limit": None,
    },
}
TOY_ONLY_CHAPTERS = ("00_toyworld",)  # the toy world's own chapter: not part of the paper book


class NotebookFailed(RuntimeError):
    """A notebook raised; ``executed_path`` keeps the executed notebook with the traceback."""

    def __init__(self, notebook: Path, executed_path: Path, cause: BaseException):
        super().__init__(f"{notebook.name} failed: {cause}\nThe executed notebook is kept at {executed_path}")
        self.executed_path = executed_path


class ParameterTypeError(TypeError):
    """A notebook parameter whose value has the wrong type (e.g. a misspelt number passed with papermill -p)."""


def check_parameters(values: dict, **expected: type | None | tuple) -> None:
    """Raise ParameterTypeError naming every parameter in ``expected`` (name=type or (types, None)) of another type.

    A notebook calls ``check_parameters(globals(), limit=(int, None), ...)`` right after its parameters cell.
    """
    problems = []
    for name, types in expected.items():
        allowed = tuple(type(None) if kind is None else kind for kind in (types if isinstance(types, tuple) else (types,)))
        allowed += (int,) if float in allowed else ()
        value = values[name]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            wanted = " or ".join("None" if kind is type(None) else kind.__name__ for kind in allowed)
            problems.append(f"{name}={value!r} is a {type(value).__name__}, expected {wanted}")
    if problems:
        raise ParameterTypeError(
            f"Wrong notebook parameter type: {'; '.join(problems)}. Pass values with papermill -p NAME VALUE "
            f"(numbers, True/False and None are parsed) or -r NAME VALUE for a string that looks like a number."
        )


@dataclass
class NotebookRun:
    notebook: Path
    executed_path: Path
    seconds: float


def book_notebooks(notebooks_dir: Path = NOTEBOOKS_DIR, only: str | None = None) -> list[Path]:
    """The numbered notebooks in run order; ``only`` keeps those whose name contains it."""
    notebooks = sorted(path for path in notebooks_dir.glob("*.ipynb") if NOTEBOOK_NAME.match(path.name))
    if only is not None:
        notebooks = [path for path in notebooks if only in path.stem]
        if not notebooks:
            raise SystemExit(f"--only {only!r} matches no notebook in {notebooks_dir}")
    return notebooks


def sync_pairs(notebooks_dir: Path) -> None:
    """Bring each numbered notebook and its py:percent twin in line (the newer side wins), as jupytext --sync does.

    A chapter that exists only as a .py file gets its .ipynb created.
    """
    import jupytext.cli

    for script in sorted(notebooks_dir.glob("[0-9][0-9]_*.py")):
        if not script.with_suffix(".ipynb").exists():
            jupytext.cli.jupytext(["--quiet", "--set-formats", "ipynb,py:percent", "--set-kernel", kernel_name(), str(script)])
    notebooks = [str(path) for path in book_notebooks(notebooks_dir)]
    if notebooks:
        jupytext.cli.jupytext(["--sync", "--quiet", *notebooks])


def kernel_name() -> str:
    """The kernel ``make`` registers, or this interpreter's own when it is not registered."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL_NAME if KERNEL_NAME in KernelSpecManager().find_kernel_specs() else "python3"


def run_notebook(notebook: Path, executed_path: Path, parameters: dict) -> NotebookRun:
    """Execute ``notebook`` with papermill into ``executed_path``, stripped of what says only how and where it ran
    (``stable.stable_notebook``) and rewritten only when its content changed (``stable.write_if_changed``)."""
    import papermill

    executed_path.parent.mkdir(parents=True, exist_ok=True)
    running_path = executed_path.with_name(f".{executed_path.stem}.running.ipynb")
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook),
            str(running_path),
            parameters=parameters,
            kernel_name=kernel_name(),
            language="python",
            cwd=str(notebook.parent),
            progress_bar=False,
        )
    except Exception as error:  # papermill raises PapermillExecutionError and writes the failed notebook
        if running_path.is_file():
            running_path.replace(executed_path)
        raise NotebookFailed(notebook, executed_path, error) from error
    write_if_changed(executed_path, stable_notebook(running_path.read_bytes()))
    running_path.unlink()
    return NotebookRun(notebook, executed_path, time.perf_counter() - start)


@contextmanager
def kernel_threads(threads: int | None) -> Iterator[None]:
    """Start the chapters' kernels with ``threads`` torch (OpenMP) threads, unless OMP_NUM_THREADS is set already.

    CPU float sums depend on the thread count, so a fixed count makes a rerun write the same bytes (a committed output
    changes only when its content does); one thread is also the fast choice on a shared 2-core machine.
    """
    if threads is None or "OMP_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        del os.environ["OMP_NUM_THREADS"]


def declared_parameters(notebook: Path) -> set[str]:
    """The names a notebook's parameters cell assigns."""
    import ast

    import nbformat

    cells = nbformat.read(notebook, as_version=4).cells
    source = next((cell.source for cell in cells if "parameters" in cell.get("metadata", {}).get("tags", [])), "")
    return {target.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def chapter_parameters(notebook: Path, profile: str, out: Path, run_parameters: dict) -> dict:
    """What a chapter gets: profile, reports_dir, the book's own settings for it, and the run parameters it declares."""
    own = (PAPER_CHAPTER_PARAMETERS if profile == "paper" else CHAPTER_PARAMETERS).get(notebook.stem, {})
    declared = declared_parameters(notebook)
    passed = {name: value for name, value in run_parameters.items() if name in declared}
    return {**own, "profile": profile, "reports_dir": str(out), **passed}


def done_record(out: Path, notebook: Path) -> Path:
    """Where a paper run notes that a chapter finished, with its parameters."""
    return out / "notebooks" / f"{notebook.stem}.done.json"


def run_book(
    profile: str = "smoke",
    out: Path = REPORTS_DIR,
    only: str | None = None,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    extra_parameters: dict | None = None,
    rerun: bool = False,
) -> list[NotebookRun]:
    """Run the book's notebooks in order; raise NotebookFailed at the first failure.

    A paper run skips a chapter whose done record (``<out>/notebooks/<chapter>.done.json``) holds the same parameters,
    unless ``rerun``; the smoke book always runs every chapter (its outputs are committed and must be rebuilt)."""
    from fidelity_lib.files import atomic_write_bytes

    out = Path(out).resolve()
    sync_pairs(notebooks_dir)
    runs = []
    with kernel_threads(None if profile == "paper" else SMOKE_THREADS):
        for notebook in book_notebooks(notebooks_dir, only):
            if profile == "paper" and notebook.stem in TOY_ONLY_CHAPTERS:
                print(f"[book] {notebook.name} skipped: it is the toy world's chapter, not part of the paper book", flush=True)
                continue
            chapter = chapter_parameters(notebook, profile, out, extra_parameters or {})
            record = done_record(out, notebook)
            if profile == "paper" and not rerun and record.is_file() and json.loads(record.read_text()) == chapter:
                print(f"[book] {notebook.name} already done with these parameters ({record}); --rerun runs it again", flush=True)
                continue
            print(f"[book] {notebook.name} (profile={profile}) ...", flush=True)
            run = run_notebook(notebook, out / "notebooks" / notebook.name, chapter)
            if profile == "paper":
                atomic_write_bytes(record, json.dumps(chapter, indent=1, sort_keys=True).encode())
            print(f"[book] {notebook.name} done in {run.seconds:.0f} s -> {run.executed_path}", flush=True)
            runs.append(run)
    return runs


def local_path(value: str | None) -> str | None:
    """An existing path made absolute (the chapters run in notebooks/), anything else (a repo id, None) as it is."""
    if value is None or not Path(value).expanduser().exists():
        return value
    return str(Path(value).expanduser().resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke", choices=["smoke", "tiny", "toy", "paper"])
    parser.add_argument("--only", help="run only the notebooks whose name contains this")
    parser.add_argument("--out", type=Path, default=REPORTS_DIR, help="where reports go (default: reports/)")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS_DIR, help=argparse.SUPPRESS)
    paper = parser.add_argument_group("paper profile")
    paper.add_argument("--weights", help="Stable Diffusion folder or cached repo id (default CompVis/stable-diffusion-v1-4)")
    paper.add_argument("--coco-dir", help="folder holding annotations/captions_train2017.json and instances_train2017.json")
    paper.add_argument("--captioner", choices=("transformers", "lavis"), default="transformers",
                       help="BLIP captioner: transformers' (default) or A&E's own LAVIS (make lavis)")
    paper.add_argument("--scale", choices=("paper", "quick"), default="paper",
                       help="paper: the papers' sets, seeds, steps and sizes; quick: a few images per set (rehearsal)")
    paper.add_argument("--check", action="store_true", help="only check that every component is there, then exit")
    paper.add_argument("--rerun", action="store_true", help="run chapters again that a paper run already finished")
    args = parser.parse_args(argv)
    if args.profile != "paper" and (args.check or args.weights or args.coco_dir or args.scale != "paper"):
        parser.error("--weights, --coco-dir, --scale and --check belong to --profile paper")
    start = time.perf_counter()
    run_parameters = {}
    if args.profile == "paper":
        from fidelity_lib.preflight import MissingComponentsError, check_paper_run

        try:
            check_paper_run(args.weights, args.coco_dir, args.captioner)
        except MissingComponentsError as missing:
            print(f"[book] preflight FAILED, nothing was run or written:\n{missing}", file=sys.stderr)
            return 2
        if args.check:
            print("[book] preflight passed: every component the paper book loads is there.")
            return 0
        run_parameters = {"weights": local_path(args.weights), "coco_dir": local_path(args.coco_dir), "captioner": args.captioner,
                          "scale": args.scale}
    try:
        runs = run_book(args.profile, args.out, args.only, args.notebooks, run_parameters, rerun=args.rerun)
    except NotebookFailed as failure:
        print(f"[book] FAILED: {failure}", file=sys.stderr)
        return 1
    print(f"[book] {len(runs)} notebooks in {time.perf_counter() - start:.0f} s; reports in {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
