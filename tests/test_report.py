import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from fidelity_lib.report import MissingProvenanceError, Provenance, build_report, read_provenance, save_figure, save_table


def provenance() -> Provenance:
    return Provenance(profile="tiny", weights="tiny-random(seed=0)", seeds="0-1", detector="toy-exact")


def test_table_carries_its_provenance(tmp_path):
    path = save_table(pd.DataFrame({"method": ["sd", "ae"], "clip": [0.25, 0.5]}), "demo", provenance(), tmp_path, "Demo table")
    markdown = path.with_suffix(".md").read_text()
    assert "| sd" in markdown and "weights tiny-random(seed=0)" in markdown and "not Stable Diffusion results" in markdown
    record = read_provenance(path)
    assert record["profile"] == "tiny" and record["seeds"] == "0-1" and record["commit"]


def test_report_shows_tables_and_figures_with_provenance_and_refuses_the_rest(tmp_path):
    save_table(pd.DataFrame({"method": ["sd"], "clip": [0.3125]}), "mscoco", provenance(), tmp_path, "MS-COCO")
    figure, axis = plt.subplots()
    axis.plot([0, 1], [0, 1])
    save_figure(figure, "curve", provenance(), tmp_path, "A curve")
    (tmp_path / "tables" / "orphan.csv").write_text("method,clip\nsd,0.99\n")
    markdown, refused = build_report(tmp_path)
    assert "### MS-COCO" in markdown and "0.3125" in markdown and "![A curve](figures/curve.png)" in markdown
    assert "0.99" not in markdown and len(refused) == 1 and "orphan.csv" in refused[0]
    assert markdown.count("Provenance: profile tiny") == 2
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


def test_provenance_labels_what_is_not_stable_diffusion():
    paper = Provenance("paper", "CompVis/stable-diffusion-v1-4", notes="requested profile paper")
    assert paper.line().startswith("Provenance: profile paper; weights CompVis/stable-diffusion-v1-4")
    assert "not Stable Diffusion" not in paper.line()
    assert "toy world: not Stable Diffusion" in Provenance("toy", "toyworld@x").line()
    assert "random tiny models" in Provenance("tiny", "tiny").line()
    mixed = Provenance.combined([{"profile": "paper", "weights": "a"}, {"profile": "toy", "weights": "b"}])
    assert mixed.weights == "a; b" and "mixed profiles: not Stable Diffusion" in mixed.line()


def test_provenance_holds_the_resolved_profile_and_reads_old_records():
    with pytest.raises(ValueError, match="resolve it"):
        Provenance("smoke", "toyworld@x")
    old = Provenance.from_record({"profile": "smoke -> toy", "weights": "toyworld@x", "line": "..."})
    assert old.profile == "toy" and "toy world" in old.line()
    assert Provenance.combined([{"profile": "paper"}, {"profile": "paper"}]).profile == "paper"


def test_a_rerun_with_the_same_content_leaves_the_artefact_and_its_record_alone(tmp_path):
    table = pd.DataFrame({"method": ["sd", "ae"], "value": [0.5, 0.6]})
    first = Provenance("toy", "toyworld@x", date="2026-01-01 00:00 UTC", commit="aaa")
    save_table(table, "t", first, tmp_path)
    figure, axis = plt.subplots()
    axis.plot([0, 1])
    save_figure(figure, "f", first, tmp_path)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*.*")}
    later = Provenance("toy", "toyworld@x", date="2026-02-02 00:00 UTC", commit="bbb")
    save_table(table, "t", later, tmp_path)
    figure, axis = plt.subplots()
    axis.plot([0, 1])
    save_figure(figure, "f", later, tmp_path)
    assert {path: path.read_bytes() for path in tmp_path.rglob("*.*")} == before  # same content: nothing rewritten
    save_table(table.assign(value=[0.5, 0.7]), "t", later, tmp_path)  # new content: the table and its record change
    assert json.loads((tmp_path / "tables" / "t.provenance.json").read_text())["commit"] == "bbb"
    assert "0.7000" in (tmp_path / "tables" / "t.md").read_text()
    assert json.loads((tmp_path / "figures" / "f.provenance.json").read_text())["commit"] == "aaa"


def test_report_follows_the_chapters_with_the_headline_first(tmp_path):
    for name in ("paper_attend_excite", "toy_gpt", "toy_gpt_ci", "layout_eval", "toyworld_baseline"):
        save_table(pd.DataFrame({"method": ["sd"], "v": [0.5]}), name, provenance(), tmp_path, name)
    for name in ("toy_gpt_metrics", "toyworld_forest", "explain_curves"):
        figure, axis = plt.subplots()
        save_figure(figure, name, provenance(), tmp_path, name)
        plt.close(figure)
    markdown, _ = build_report(tmp_path, headline="| paper | claim |")
    order = ["## The headline", "### toyworld_forest", "### toyworld_baseline", "### layout_eval", "### explain_curves",
             "### toy_gpt\n", "### toy_gpt_metrics", "### paper_attend_excite"]
    assert [markdown.index(heading) for heading in order] == sorted(markdown.index(heading) for heading in order)
    assert "### toy_gpt_ci" not in markdown and "[tables/toy_gpt_ci.csv](tables/toy_gpt_ci.csv)" in markdown
