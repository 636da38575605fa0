"""Tables and figures with provenance, and the report that assembles them.

Every table or figure a chapter writes goes through ``save_table`` / ``save_figure``: beside the CSV/Markdown/PNG they
write ``<name>.provenance.json`` (profile, weights, seeds, detector, date, git commit). ``build_report`` refuses to
show an artefact without one.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from fidelity_lib.files import atomic_write_bytes
from fidelity_lib.stable import same_content, same_text

REPO_ROOT = Path(__file__).resolve().parent.parent
PAPER_TABLES = REPO_ROOT / "data" / "paper_tables.csv"
PAPER_TABLE_COLUMNS = ["paper", "table", "dataset", "method", "metric", "value", "source"]
BENCHMARKS = REPO_ROOT / "reports" / "benchmarks.md"


def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when the tree has uncommitted changes; ``unknown`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


PROFILE_LABELS = {  # every profile that runs, with what its numbers are not
    "paper": "",
    "toy": " (toy world: not Stable Diffusion results)",
    "tiny": " (random tiny models: plumbing only, not Stable Diffusion results)",
}


def ran_profile(profile: str) -> str:
    """The profile that ran, from a provenance profile field: old records say "smoke -> toy"; "a; b" stays joined."""
    return "; ".join(dict.fromkeys(part.split("->")[-1].strip() for part in profile.split(";")))


@dataclass
class Provenance:
    """Which run made an artefact."""

    profile: str
    weights: str
    seeds: str = "n/a"
    detector: str = "n/a"
    notes: str = ""
    date: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    commit: str = field(default_factory=git_commit)

    def __post_init__(self):
        unknown = [part for part in self.profile.split("; ") if part not in PROFILE_LABELS]
        if unknown:
            raise ValueError(
                f"Provenance.profile is the profile that ran (paper, toy or tiny; '; ' joins those of a combined "
                f"artefact), not {', '.join(map(repr, unknown))}: resolve it (components.resolve_profile) and put the "
                f"requested one in the notes."
            )

    @classmethod
    def from_record(cls, record: dict) -> Provenance:
        """The provenance of a written provenance record (its ``title`` and ``line`` dropped). Records written before
        the profile field held only the resolved profile ("smoke -> toy") are read as the resolved one."""
        fields = {key: record[key] for key in cls.__dataclass_fields__ if key in record}
        return cls(**fields | {"profile": ran_profile(str(fields.get("profile", "n/a")))})

    @classmethod
    def combined(cls, records: list[dict], notes: str = "") -> Provenance:
        """One provenance for an artefact built from others' numbers: each field joins their distinct values."""
        def joined(key: str) -> str:
            values = [str(record.get(key, "n/a")) for record in records]
            if key == "profile":
                values = [part for value in values for part in ran_profile(value).split("; ")]
            return "; ".join(dict.fromkeys(values))

        return cls(profile=joined("profile"), weights=joined("weights"), seeds=joined("seeds"), detector=joined("detector"), notes=notes)

    def line(self, run: bool = True) -> str:
        """One human-readable line, the caption every table and figure carries; ``run=False`` leaves out the date and
        commit (the provenance record beside the artefact keeps them), so that a rerun with the same content writes the
        same bytes."""
        resolved = set(self.profile.split("; "))  # "a; b" joins the sources of a combined artefact
        smoke = PROFILE_LABELS[resolved.pop()] if len(resolved) == 1 else " (mixed profiles: not Stable Diffusion results)"
        parts = [f"profile {self.profile}{smoke}", f"weights {self.weights}", f"seeds {self.seeds}", f"detector {self.detector}"]
        parts += [f"{self.date}", f"commit {self.commit}"] if run else []
        return "Provenance: " + "; ".join(parts) + (f". {self.notes}" if self.notes else "")


def write_benchmark_section(name: str, section: str, path: Path = BENCHMARKS) -> None:
    """Replace benchmark ``name``'s section of reports/benchmarks.md (or append it), leaving the other sections alone."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{section.strip()}\n{end}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end) + "\n?", re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    atomic_write_bytes(path, text.encode())


RUN_FIELDS = ("date", "commit", "line")  # what a rerun changes even when the artefact's content is the same


def _provenance_path(path: Path) -> Path:
    return path.with_name(path.stem + ".provenance.json")


def _unchanged(files: dict[Path, bytes], provenance: Provenance, title: str, summary: str) -> bool:
    """Whether every file already holds this content (``stable.same_content``: tables at their shown precision,
    images within a few pixel values) and its provenance record differs only in date, commit and the summary's last
    shown digits."""
    record_path = _provenance_path(next(iter(files)))
    if not record_path.is_file() or not all(same_content(path, data) for path, data in files.items()):
        return False
    try:
        old = json.loads(record_path.read_text())
    except ValueError:
        return False
    new = {"title": title, **asdict(provenance), "summary": summary}
    return same_text(str(old.get("summary", "")), summary) and all(
        old.get(key) == value for key, value in new.items() if key not in (*RUN_FIELDS, "summary"))


def save_with_provenance(files: dict[Path, bytes], provenance: Provenance, title: str, summary: str = "") -> None:
    """Write the files and the provenance record of the first (``<stem>.provenance.json``), unless they hold this
    content already: a committed output then keeps its bytes, and its record the run that first made it."""
    if _unchanged(files, provenance, title, summary):
        return
    for path, data in files.items():
        atomic_write_bytes(path, data)
    record = {"title": title, **asdict(provenance), "summary": summary, "line": provenance.line()}
    atomic_write_bytes(_provenance_path(next(iter(files))), json.dumps(record, indent=2).encode())


def save_table(
    table: pd.DataFrame, name: str, provenance: Provenance, reports_dir: str | Path, title: str = "", summary: str = ""
) -> Path:
    """Write ``tables/<name>.csv`` and ``.md`` (with the provenance line, and ``summary``: what the table shows, in
    words that code wrote from its numbers) and the provenance record."""
    csv_path = Path(reports_dir) / "tables" / f"{name}.csv"
    markdown = (f"### {title}\n\n" if title else "") + table.to_markdown(index=False, floatfmt=".4f") + "\n\n"
    markdown += (f"{summary}\n\n" if summary else "") + f"{provenance.line(run=False)}\n"
    files = {csv_path: table.to_csv(index=False).encode(), csv_path.with_suffix(".md"): markdown.encode()}
    save_with_provenance(files, provenance, title or name, summary)
    return csv_path


def save_figure(figure, name: str, provenance: Provenance, reports_dir: str | Path, title: str = "") -> Path:
    """Write ``figures/<name>.png`` with the provenance line printed under everything the figure draws (axis labels
    included, so that nothing overlaps it), and the provenance record."""
    import io

    path = Path(reports_dir) / "figures" / f"{name}.png"
    bottom = figure.get_tightbbox(figure.canvas.get_renderer()).y0 / figure.get_figheight()  # figure fraction
    figure.text(0.01, bottom - 0.015, provenance.line(run=False), fontsize=6, ha="left", va="top", wrap=True, color="0.35")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    save_with_provenance({path: buffer.getvalue()}, provenance, title or name)
    return path


class MissingProvenanceError(ValueError):
    pass


def read_provenance(artefact: Path) -> dict:
    """The provenance record of a table or figure; refuse artefacts without one."""
    record_path = artefact.with_name(artefact.stem + ".provenance.json")
    if not record_path.is_file():
        raise MissingProvenanceError(f"{artefact} has no provenance record ({record_path.name}): re-run the chapter that writes it.")
    record = json.loads(record_path.read_text())
    for key in ("profile", "weights", "commit", "date"):
        if not record.get(key):
            raise MissingProvenanceError(f"{record_path} lacks '{key}': re-run the chapter that writes it.")
    return record


def paper_numbers(dataset: str) -> pd.DataFrame:
    """The papers' published numbers for a dataset, from data/paper_tables.csv (empty when none are transcribed)."""
    if not PAPER_TABLES.is_file():
        return pd.DataFrame(columns=PAPER_TABLE_COLUMNS)
    table = pd.read_csv(PAPER_TABLES)
    return table[table["dataset"] == dataset]


# the book's chapters, in order, and the artefact names each writes (the first prefix that matches; the rest: chapter 4)
CHAPTERS = [
    ("0. The toy world and its held-out headline", ("toyworld_headline", "toyworld_forest", "toyworld_")),
    ("1. The layout predictor", ("layout_",)),
    ("2. Generation", ("02_generate",)),
    ("3. Attention explained", ("explain_",)),
    ("4. Evaluation, one set at a time", ("",)),
    ("5. The papers' tables, in their shape", ("paper_",)),
]
LONG_TABLE_SUFFIX = "_ci"  # chapter 4's long tables: the same numbers as the set's wide table, linked rather than shown


def chapter_of(name: str) -> tuple[int, int]:
    """(chapter, rank of the matching prefix) of an artefact named ``name``; paper_* tables belong to chapter 5."""
    for number, (_, prefixes) in reversed(list(enumerate(CHAPTERS))):
        for rank, prefix in enumerate(prefixes):
            if prefix and name.startswith(prefix):
                return number, rank
    return 4, 0


def build_report(reports_dir: str | Path, headline: str = "") -> tuple[str, list[str]]:
    """Markdown for reports/README.md: ``headline`` first (the toy findings), then every table and figure with
    provenance in chapter order, each set's table beside its figure; also the refused artefacts."""
    reports_dir = Path(reports_dir)
    sections = ["# fidelity-book report", "",
                "Every table and figure below was measured by the book's code; the provenance line says which profile and "
                "weights made it. Smoke-profile numbers come from random or toy-world weights and are **not** paper results.", ""]
    sections += ["## The headline", "", headline, ""] if headline else []
    refused = []
    artefacts = [path for path in (reports_dir / "tables").glob("*.csv") if not path.stem.endswith(LONG_TABLE_SUFFIX)]
    artefacts += list((reports_dir / "figures").glob("*.png"))
    placed = {path: chapter_of(path.stem) for path in artefacts}
    artefacts.sort(key=lambda path: (*placed[path], path.stem.removesuffix("_metrics"), path.suffix != ".csv"))
    chapter = None
    for path in artefacts:
        try:
            record = read_provenance(path)
        except MissingProvenanceError as error:
            refused.append(str(error))
            continue
        if placed[path][0] != chapter:
            chapter = placed[path][0]
            sections += [f"## {CHAPTERS[chapter][0]}", ""]
        if path.suffix == ".png":
            sections += [f"### {record['title']}", "", f"![{record['title']}](figures/{path.name})", "", record["line"], ""]
            continue
        table = pd.read_csv(path, keep_default_na=False, na_values=[""])  # a written "n/a" stays "n/a"
        sections += [f"### {record['title']}", "", table.to_markdown(index=False, floatfmt=".4f"), ""]
        sections += [record["summary"], ""] if record.get("summary") else []
        long_table = path.with_name(f"{path.stem}{LONG_TABLE_SUFFIX}.csv")
        sections += [f"Values, CIs and counts: [tables/{long_table.name}](tables/{long_table.name}).", ""] if long_table.is_file() else []
        sections += [record["line"], ""]
        published = paper_numbers(path.stem)
        sections += ["Published numbers: " + ("not transcribed." if published.empty else ""), ""]
        if not published.empty:
            sections += [published.to_markdown(index=False), ""]
    if refused:
        sections += ["## Not shown (no provenance)", "", *[f"- {reason}" for reason in refused], ""]
    return "\n".join(sections), refused
