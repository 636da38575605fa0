import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from fidelity_lib.report import MissingProvenanceError, Provenance, build_report, read_provenance, save_figure, save_table


def provenance() -> Provenance:
    return Provenance(profile="smoke", weights="tiny-random(seed=0)", seeds="0-1", detector="toy-exact")


def test_table_carries_its_provenance(tmp_path):
    path = save_table(pd.DataFrame({"method": ["sd", "ae"], "clip": [0.25, 0.5]}), "demo", provenance(), tmp_path, "Demo table")
    markdown = path.with_suffix(".md").read_text()
    assert "| sd" in markdown and "weights tiny-random(seed=0)" in markdown and "not Stable Diffusion results" in markdown
    record = read_provenance(path)
    assert record["profile"] == "smoke" and record["seeds"] == "0-1" and record["commit"]


def test_report_shows_tables_and_figures_with_provenance_and_refuses_the_rest(tmp_path):
    save_table(pd.DataFrame({"method": ["sd"], "clip": [0.3125]}), "mscoco", provenance(), tmp_path, "MS-COCO")
    figure, axis = plt.subplots()
    axis.plot([0, 1], [0, 1])
    save_figure(figure, "curve", provenance(), tmp_path, "A curve")
    (tmp_path / "tables" / "orphan.csv").write_text("method,clip\nsd,0.99\n")
    markdown, refused = build_report(tmp_path)
    assert "### MS-COCO" in markdown and "0.3125" in markdown and "![A curve](figures/curve.png)" in markdown
    assert "0.99" not in markdown and len(refused) == 1 and "orphan.csv" in refused[0]
    assert markdown.count("Provenance: profile smoke") == 2
    assert "Published numbers: not transcribed." in markdown


def test_provenance_record_without_weights_is_refused(tmp_path):
    path = save_table(pd.DataFrame({"a": [1]}), "t", provenance(), tmp_path)
    record_path = path.with_name("t.provenance.json")
    record = json.loads(record_path.read_text())
    record["weights"] = ""
    record_path.write_text(json.dumps(record))
    with pytest.raises(MissingProvenanceError, match="lacks 'weights'"):
        read_provenance(path)


def test_benchmark_sections_replace_only_their_own_block(tmp_path):
    from fidelity_lib.report import write_benchmark_section

    path = tmp_path / "benchmarks.md"
    write_benchmark_section("a", "## A\n\nfirst", path)
    write_benchmark_section("b", "## B\n\nsecond", path)
    write_benchmark_section("a", "## A\n\nfirst, again", path)
    text = path.read_text()
    assert text.count("## A") == 1 and "first, again" in text and "second" in text
    assert text.index("## A") < text.index("## B")
