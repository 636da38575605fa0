"""The rehearsal's checks (fidelity_lib.rehearsal): what makes it fail, on hand-made report folders; the README's job
size table against the code. The rehearsal itself (make rehearse, in .ci/run after the tests) runs the paper book."""

import json
import re
from pathlib import Path

import pandas as pd

from fidelity_lib.chapters import METHODS, PAPER_SCALES, job_size_table
from fidelity_lib.datasets import AE_SETS, ST_SETS
from fidelity_lib.rehearsal import manifest_lines, rehearsal_problems, resume_problems

README = Path(__file__).resolve().parent.parent / "README.md"
QUICK = f"cells from ...; {PAPER_SCALES['quick'].describe()}"


def write_reports(out: Path, sets_ae=tuple(AE_SETS), sets_st=ST_SETS, profile="paper", images=2, notes=QUICK) -> None:
    """Two paper tables and a provenance record, as chapter 5 writes them."""
    (out / "tables").mkdir(parents=True)
    for table, sets in (("paper_attend_excite", sets_ae), ("paper_spatial_temporal", sets_st)):
        rows = [{"set": name, "method": method, "prompts": 2, "images": images} for name in sets for method in METHODS]
        pd.DataFrame(rows).to_csv(out / "tables" / f"{table}.csv", index=False)
        (out / "tables" / f"{table}.provenance.json").write_text(json.dumps({"profile": profile, "notes": notes}))


def test_complete_paper_reports_pass(tmp_path):
    write_reports(tmp_path)
    assert rehearsal_problems(tmp_path) == []


def test_a_missing_set_an_empty_row_and_a_toy_provenance_each_fail(tmp_path):
    write_reports(tmp_path / "a", sets_st=("gpt", "mscoco"))
    assert rehearsal_problems(tmp_path / "a") == [f"no row for vsr with {method}" for method in sorted(METHODS)]
    write_reports(tmp_path / "b", images=0)
    assert len(rehearsal_problems(tmp_path / "b")) == 24
    write_reports(tmp_path / "c", profile="toy")
    assert all("says profile 'toy'" in problem for problem in rehearsal_problems(tmp_path / "c"))
    write_reports(tmp_path / "e", notes=f"cells from ...; {PAPER_SCALES['paper'].describe()}")
    assert all("does not say that it ran at the quick scale" in problem for problem in rehearsal_problems(tmp_path / "e"))
    assert len(rehearsal_problems(tmp_path / "e")) == 2
    assert rehearsal_problems(tmp_path / "d") == [f"{tmp_path / 'd' / 'tables' / name}.csv was not written" for name in
                                                  ("paper_attend_excite", "paper_spatial_temporal")] + [
        f"no row for {name} with {method}" for name in sorted((*AE_SETS, *ST_SETS)) for method in sorted(METHODS)
    ] + [f"no provenance record under {tmp_path / 'd'}"]


def test_resume_problems_name_an_image_made_again_and_a_chapter_run_again(tmp_path):
    images = tmp_path / "images" / "paper"
    kept, remade = images / "sd" / "a_cat" / "0.png", images / "sd" / "a_cat" / "1.png"
    chapter = tmp_path / "notebooks" / "00_setup.ipynb"
    for path in (kept, remade, chapter):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    before = {kept: kept.stat().st_mtime_ns, remade: remade.stat().st_mtime_ns - 1}
    line = {"method": "sd", "prompt": "a cat", "seed": 1}
    (images / "manifest.jsonl").write_text("\n".join(json.dumps(record) for record in (line, line | {"seed": 0}, line)) + "\n")
    assert len(manifest_lines(tmp_path)) == 3
    problems = resume_problems(tmp_path, before, {"00_setup": chapter.stat().st_mtime_ns + 1})
    assert problems == ["00_setup ran again after the kill", "images/paper/sd/a_cat/1.png was made again",
                        "('sd', 'a cat', 1) has 2 manifest lines"]


def test_the_readme_job_size_table_is_the_codes():
    text = README.read_text(encoding="utf-8")
    table = re.search(r"<!-- job-size:start -->\n(.*?)\n<!-- job-size:end -->", text, re.S).group(1)
    assert table == job_size_table(PAPER_SCALES["paper"])
    assert "| all | | | | 76,656 |" in table  # (66 + 144 + 66) x 64 x 4 + 3 x 500 x 4
