"""The README's front page: the findings table is the code's, from the headline's paired rows."""

import json
import re

import pandas as pd

from fidelity_lib.findings import README, findings_table, measured_cell, paper_status, update_readme
from fidelity_lib.toyworld.calibration import CHOSEN_AE


def test_the_readme_findings_table_is_the_codes():
    text = README.read_text()
    block = re.search(r"<!-- findings:start -->\n(.*?)\n<!-- findings:end -->", text, re.S).group(1)
    assert block == findings_table(), "run the smoke book (make book) or fidelity_lib.findings.update_readme()"
    assert text.index("<!-- findings:start -->") < text.index("## Two commands")  # on the first screen


def test_a_cell_states_the_difference_its_ci_n_repairs_and_breakages_or_that_it_is_missing():
    paired = pd.DataFrame([{"set": "toy_ae_object_object", "setting": CHOSEN_AE, "metric": "all_present", "difference": 0.034,
                            "ci_low": 0.009, "ci_high": 0.0586, "n_pairs": 648, "repairs": 45, "breakages": 23}])
    cell = measured_cell(paired, "toy_ae_object_object", CHOSEN_AE, "ae", "all_present")
    assert cell == "ae vs sd on toy_ae_object_object, presence of every object: +3.4 [+0.9, +5.9] points, 648 pairs, 45 repaired / 23 broken"
    assert "not measured yet" in measured_cell(paired, "toy_gpt", CHOSEN_AE, "ae", "all_present")


def test_the_paper_status_comes_from_the_tables_provenance(tmp_path):
    assert paper_status(tmp_path).startswith("not run on real weights yet")
    (tmp_path / "paper_attend_excite.provenance.json").write_text(json.dumps({"profile": "paper"}))
    assert paper_status(tmp_path).startswith("measured on real weights")


def test_update_readme_rewrites_only_its_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# t\n<!-- findings:start -->\nold\n<!-- findings:end -->\nrest\n")
    assert update_readme(readme, "| new |") and readme.read_text() == "# t\n<!-- findings:start -->\n| new |\n<!-- findings:end -->\nrest\n"
    assert not update_readme(readme, "| new |")


def test_chapter_4_takes_the_headlines_paired_differences_for_its_sets(tmp_path):
    from fidelity_lib.chapters import toy_headline_comparisons
    from fidelity_lib.report import Provenance

    rows = [{"set": "toy_gpt", "setting": "s", "method": "st", "metric": "relation_correct", "n_pairs": 600, "difference": 0.333,
             "ci_low": 0.29, "ci_high": 0.377, "repairs": 226, "breakages": 26},
            {"set": "toy_vsr", "setting": "s", "method": "st", "metric": "all_present", "n_pairs": 300, "difference": -0.01,
             "ci_low": -0.04, "ci_high": 0.02, "repairs": 3, "breakages": 6}]
    pd.DataFrame(rows).to_csv(tmp_path / "headline_paired.csv", index=False)
    record = {"profile": "toy", "weights": "toyworld@x", "date": "d", "commit": "c"}
    (tmp_path / "headline_paired.provenance.json").write_text(json.dumps(record))
    table, provenance = toy_headline_comparisons(["toy_gpt"], tmp_path)
    assert table.to_dict("records") == [{"set": "toy_gpt", "method": "st", "metric": "relation accuracy", "pairs": 600,
                                         "difference vs sd, points [95% CI]": "+33.3 [+29.0, +37.7]", "repaired": 226, "broken": 26}]
    assert provenance == Provenance(profile="toy", weights="toyworld@x", date="d", commit="c")
