"""``python -m stablesdg.report``: tables whose cells are the results' metrics, missing cells marked, figures,
grids and W&B tables."""

from __future__ import annotations

import csv
import json
import logging
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from conftest import REPO, compose_config
from stablesdg import artifacts, grids, report
from stablesdg.tables import paper_tables


MACHINE = {"cpu": "AMD EPYC 9R14", "cpu_capability": "AVX2", "cpu_threads": 2, "gpu": None, "cuda": None}
ON_MACHINE = "Our values were computed on AMD EPYC 9R14, AVX2, 2 threads."  # each table's last note


def _result(root, stage, dataset, category, variant, metrics, name=None, config=None, machine=None):
    directory = artifacts.stage_dir(root, dataset, category, variant, name or stage)
    artifacts.write_result(directory, stage=stage, dataset=dataset, category=category, variant=variant,
                           metrics=metrics, config=config or {}, wall_time_s=1.0, machine=machine or MACHINE)
    return directory


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "artifacts"
    _result(root, "fid", "neu", "Pa", "default", {"fid": 41.5})
    _result(root, "fid", "neu", "Cr", "default", {"fid": 60.25})
    _result(root, "fid", "neu", "Pa", "ti_only", {"fid": 120.0})
    _result(root, "fid", "synthetic", "Pa", "default", {"fid": 7.0})
    for seed, accuracy in enumerate([0.8, 0.9, 0.7]):
        _result(root, "classify", "neu", None, "default",
                {"test_accuracy": accuracy, "classifier": "squeezenet", "alpha": 0.4, "mode": "none"},
                name=f"classify_squeezenet_a0.4_none_seed{seed}")
    _result(root, "classify", "neu", None, "default",
            {"test_accuracy": 0.95, "classifier": "resnet", "alpha": 0.4, "mode": "expand"}, name="classify_resnet_expand")
    for s, g, fid in [(0.3, 3, 50.0), (0.5, 5, 30.0)]:
        _result(root, "generate", "neu", "Pa", "default", {"fid": fid, "strength": s, "guidance_scale": g, "init": "image"},
                name=f"sweep_s{s}_g{g}")
    _result(root, "lora", "neu", "Pa", "lora_rank_4", {"trainable_parameters": 1234})
    _result(root, "fid", "neu", "Pa", "lora_rank_4", {"fid": 33.0})
    return root


def _csv(path):
    with open(path, newline="") as handle:
        return {row["row"]: row for row in csv.DictReader(handle)}


def test_report_cells_equal_the_results_and_missing_cells_stay_missing(tree, capsys):
    # text-to-image at ω = 3: its strength (the dataset's default, unused) puts it in no cell of Table IV
    _result(tree, "generate", "neu", "Pa", "default", {"fid": 90.0, "strength": 0.5, "guidance_scale": 3, "init": "noise"},
            name="text_to_image_g3")
    assert report.main(["--artifacts", str(tree)]) == 0
    out = tree / "report"
    fid = _csv(out / "table5_fid.csv")
    assert float(fid["StableSDG"]["Pa ours"]) == 41.5 and float(fid["StableSDG"]["Cr ours"]) == 60.25
    assert float(fid["Textual Inversion"]["Pa ours"]) == 120.0
    assert fid["Textual Inversion"]["Cr ours"] == "" and fid["DCGAN"]["Pa ours"] == "", "no result: empty, not 0"
    assert fid["StableSDG"]["Pa n"] == "1" and fid["StableSDG"]["Pa ours_std"] == ""

    accuracy = _csv(out / "table6_accuracy.csv")
    seeds = [80.0, 90.0, 70.0]
    assert float(accuracy["None (real only)"]["SqueezeNet ours"]) == pytest.approx(statistics.mean(seeds))
    assert float(accuracy["None (real only)"]["SqueezeNet ours_std"]) == pytest.approx(statistics.stdev(seeds))
    assert accuracy["None (real only)"]["SqueezeNet n"] == "3"
    assert float(accuracy["StableSDG"]["ResNet ours"]) == pytest.approx(95.0)
    assert accuracy["StableSDG"]["SqueezeNet ours"] == ""

    markdown = (out / "table6_accuracy.md").read_text()
    assert "| None (real only) | – | – | – | – | – | – | 80.00 ± 10.00 (n=3) | – |" in markdown
    grid = _csv(out / "table4_grid.csv")
    assert float(grid["0.3"]["3 ours"]) == 50.0 and float(grid["0.5"]["5 ours"]) == 30.0 and grid["0.5"]["3 ours"] == ""
    assert Image.open(out / "table4_grid.png").size[0] > 100, "the Table IV heatmap"
    rank = _csv(out / "fig6_lora_rank.csv")
    assert float(rank["4"]["FID ours"]) == 33.0 and float(rank["4"]["trainable parameters ours"]) == 1234
    assert (out / "fig6_lora_rank.png").is_file() and (out / "fig9_substitution.png").is_file()
    assert float(_csv(out / "fig9_substitution.csv")["α = 0.4, real only"]["SqueezeNet ours"]) == pytest.approx(80.0)
    index = (out / "report.md").read_text()
    assert all(f"### {spec['title']}" in index for spec in paper_tables().values())
    assert "table5_fid: 3 of 42 cells" in capsys.readouterr().out


def _rendered_tables(markdown_text):
    """Each table's rows as a reader of the rendered Markdown sees them: the text of each cell (raw HTML dropped)."""
    from markdown_it import MarkdownIt

    tables, rows, cells = [], None, None
    for token in MarkdownIt("commonmark", {"html": True}).enable("table").parse(markdown_text):
        if token.type == "table_open":
            tables.append(rows := [])
        elif token.type == "tr_open":
            rows.append(cells := [])
        elif token.type == "inline" and cells is not None and rows is not None:
            cells.append("".join(child.content for child in token.children if child.type in ("text", "text_special")))
        elif token.type == "table_close":
            rows = cells = None
    return tables


def test_the_rendered_report_shows_every_row_label_as_written_in_the_paper_tables(tree):
    assert report.main(["--artifacts", str(tree)]) == 0
    rendered = _rendered_tables((tree / "report/report.md").read_text())
    specs = paper_tables()
    assert len(rendered) == len(specs)
    for rows, spec in zip(rendered, specs.values()):
        assert [cells[0] for cells in rows[1:]] == list(spec["rows"]), spec["title"]
    assert [cells[0] for cells in rendered[1][1:]] == ["defect", "patches", "<unknown>"], "Table III's last row"


def test_paper_values_print_beside_ours(tree, monkeypatch):
    specs = paper_tables()
    specs["table5_fid"]["paper"] = {"StableSDG": {"Pa": 12.5}}
    monkeypatch.setattr(report, "paper_tables", lambda: specs)
    assert report.main(["--artifacts", str(tree)]) == 0
    row = _csv(tree / "report/table5_fid.csv")["StableSDG"]
    assert (float(row["Pa ours"]), float(row["Pa paper"]), row["Cr paper"]) == (41.5, 12.5, "")
    assert "| StableSDG | 60.25 | – | – | – | 41.50 | 12.50 |" in (tree / "report/table5_fid.md").read_text()


def test_each_fid_table_says_how_its_values_were_scored_and_warns_when_they_mix_extractors_or_set_sizes(
        tmp_path, capsys):
    # the default stage.features=random_inception printed beside the paper's InceptionV3 FIDs without a word, and a
    # DCGAN scored on pixels sat in one table with StableSDG scored on inception
    root = tmp_path / "artifacts"
    _result(root, "fid", "neu", "Pa", "default", {"fid": 41.5, "features": "random_inception", "n_fake": 1000})
    _result(root, "fid", "neu", "Cr", "default", {"fid": 60.0, "features": "random_inception", "n_fake": 1000})
    _result(root, "fid", "neu", "Pa", "ti_only", {"fid": 90.0, "features": "inception", "n_fake": 1000})
    _result(root, "fid", "neu", "Pa", "dcgan", {"fid": 99.0, "features": "pixels", "n_fake": 64})
    _result(root, "fid", "neu", "Cr", "dcgan", {"fid": 98.0, "features": "inception", "n_fake": 1000})
    assert report.main(["--artifacts", str(root)]) == 0
    printed = capsys.readouterr()
    out = root / "report"
    assert (out / "table3_prompts.md").read_text().endswith(  # of these, Table III reads only default's Pa
        "\nOur FID/KID values: stage.features=random_inception, 1000 generated images per set; they rank runs of this "
        f"tool against each other and do not compare with the paper's (InceptionV3 features).\n\n{ON_MACHINE}\n")
    assert "table3_prompts: 1 of 3 cells (FID/KID on random_inception features: not comparable with the paper's)" \
        in printed.out
    ablation = ("Our FID/KID values mix feature extractors (stage.features: 1 value on inception, 1 on "
                "random_inception): values scored differently do not compare; score every set alike (stage=fid with "
                "one stage.features and stage.max_images).")
    methods = ("Our FID/KID values mix feature extractors (stage.features: 2 values on inception, 1 on pixels, "
               "2 on random_inception) and set sizes (1 value of 64, 4 of 1000 generated images): values scored "
               "differently do not compare; score every set alike (stage=fid with one stage.features and "
               "stage.max_images).")
    assert (out / "table2_ablation.md").read_text().endswith(f"\n{ablation}\n\n{ON_MACHINE}\n")
    assert (out / "table5_fid.md").read_text().endswith(f"\n{methods}\n\n{ON_MACHINE}\n")
    assert f"\n{methods}\n" in (out / "report.md").read_text()
    assert printed.err == f"warning: table2_ablation: {ablation}\nwarning: table5_fid: {methods}\n"
    assert "table2_ablation: 2 of 8 cells\n" in printed.out and "table5_fid: 5 of 42 cells\n" in printed.out
    assert "Our FID/KID" not in (out / "table6_accuracy.md").read_text(), "no note on a table of accuracies"


def test_a_table_scored_alike_on_inception_says_so_and_prints_no_warning(tmp_path, capsys):
    root = tmp_path / "artifacts"
    for category in ("Pa", "Cr"):
        _result(root, "fid", "neu", category, "default", {"fid": 40.0, "features": "inception", "n_fake": 1000})
    assert report.main(["--artifacts", str(root)]) == 0
    printed = capsys.readouterr()
    assert (root / "report/table5_fid.md").read_text().endswith(
        f"\nOur FID/KID values: InceptionV3 features (stage.features=inception), 1000 generated images per set.\n\n"
        f"{ON_MACHINE}\n")
    assert "table5_fid: 2 of 42 cells\n" in printed.out and printed.err == ""


def test_cells_whose_classifiers_learned_from_images_made_beyond_their_alpha_subset_are_named(tmp_path):
    root = tmp_path / "artifacts"
    for classifier, beyond in (("resnet", 36), ("vgg", 0)):
        _result(root, "classify", "neu", None, "default",
                {"test_accuracy": 0.9, "classifier": classifier, "alpha": 0.4, "mode": "expand",
                 "generated_made_beyond_alpha": beyond}, name=f"classify_{classifier}_a0.4_expand_seed0")
    _result(root, "classify", "neu", None, "default",  # written before the count was recorded: not named
            {"test_accuracy": 0.9, "classifier": "alexnet", "alpha": 0.4, "mode": "expand"}, name="classify_alexnet")
    assert report.main(["--artifacts", str(root)]) == 0
    assert (root / "report/table6_accuracy.md").read_text().endswith(
        "\nCells whose classifiers trained on generated images that img2img made from real training images outside their "
        "α-subset (generated_made_beyond_alpha in their result.json): StableSDG / ResNet. Those images show what the "
        "α-subset alone does not; adapt and generate with stage.alpha equal to the classifier's for sets that do not.\n\n"
        f"{ON_MACHINE}\n")


def test_an_accuracy_table_says_how_many_generated_images_per_class_its_expanded_classifiers_added(tmp_path):
    root = tmp_path / "artifacts"
    expanded = {"test_accuracy": 0.9, "alpha": 0.4, "mode": "expand"}
    for classifier, extra in (("resnet", 1000), ("vgg", 1000), ("alexnet", 64)):
        _result(root, "classify", "neu", None, "default", {**expanded, "classifier": classifier},
                name=f"classify_{classifier}_a0.4_expand_seed0", config={"stage": {"extra_per_class": extra}})
    _result(root, "classify", "neu", None, "default",  # real images only: its setting is unread
            {**expanded, "classifier": "resnet", "mode": "none"}, name="classify_resnet_a0.4_none_seed0",
            config={"stage": {"extra_per_class": 5}})
    assert report.main(["--artifacts", str(root)]) == 0
    assert (root / "report/table6_accuracy.md").read_text().endswith(
        "\nOur expanded classifiers added different numbers of generated images per class (stage.extra_per_class: "
        f"1 value with 64, 2 with 1000), which do not compare.\n\n{ON_MACHINE}\n")
    assert "expanded classifiers" not in (root / "report/fig9_substitution.md").read_text()  # no classifier expanded

    (root / "neu/all/default/classify_alexnet_a0.4_expand_seed0/result.json").unlink()
    assert report.main(["--artifacts", str(root)]) == 0
    assert (root / "report/table6_accuracy.md").read_text().endswith(
        f"\nOur expanded classifiers added 1000 generated images per class (stage.extra_per_class).\n\n{ON_MACHINE}\n")


def test_a_result_that_read_another_methods_set_than_its_variants_is_in_no_row_and_a_note_names_it(tmp_path, capsys,
                                                                                                  monkeypatch):
    import wandb

    monkeypatch.setattr(wandb, "init", lambda **kwargs: _Run())
    monkeypatch.setattr(_Run, "summary", {})
    root = tmp_path / "artifacts"
    # each in its variant's row: StableSDG's own set, and a folder scored under a variant named for its method
    _result(root, "fid", "neu", "Pa", "default", {"fid": 40.0, "generated": "default"})
    _result(root, "fid", "neu", "Pa", "stylegan3", {"fid": 55.0, "generated": "/data/sg3"})
    # a folder scored under variant default (no variant= given), and DCGAN's set scored under TI's variant
    _result(root, "fid", "neu", "Cr", "default", {"fid": 99.0, "generated": "/data/sg3"})
    _result(root, "fid", "neu", "Sc", "ti_only", {"fid": 77.0, "generated": "dcgan"})
    expanded = {"test_accuracy": 0.9, "classifier": "resnet", "alpha": 0.4, "mode": "expand"}
    # expanded by a folder under variant default, recorded before the set read was: its setting says it
    _result(root, "classify", "neu", None, "default", expanded, name="classify_resnet_a0.4_expand_seed0",
            config={"stage": {"generated": "/data/sg3"}})
    _result(root, "classify", "neu", None, "default", {**expanded, "classifier": "vgg", "generated": "default"},
            name="classify_vgg_a0.4_expand_seed0")
    _result(root, "classify", "neu", None, "default",  # real images only: the set its setting names is unread
            {**expanded, "test_accuracy": 0.6, "mode": "none", "generated": None}, name="classify_resnet_a0.4_none_seed0",
            config={"stage": {"generated": "/data/sg3"}})
    assert report.main(["--artifacts", str(root), "--wandb", str(tmp_path / "logs")]) == 0
    fid = _csv(root / "report/table5_fid.csv")
    assert float(fid["StableSDG"]["Pa ours"]) == 40.0 and float(fid["StyleGAN3"]["Pa ours"]) == 55.0
    assert fid["StableSDG"]["Cr ours"] == "" and fid["Textual Inversion"]["Sc ours"] == ""
    accuracy = _csv(root / "report/table6_accuracy.csv")
    assert accuracy["StableSDG"]["ResNet ours"] == "" and float(accuracy["StableSDG"]["VGG ours"]) == 90.0
    assert float(accuracy["None (real only)"]["ResNet ours"]) == 60.0
    note = ("3 of these results read another generated set than their variant's own and are in no table (first: "
            "neu/Cr/default/fid): stage.generated=/data/sg3 is a folder read under variant default, StableSDG's own "
            "(where a run that names no variant goes), so the report leaves this result out of its tables (StableSDG's "
            "rows count its own generated sets only); for a row, name the method the folder holds: variant=<name> "
            "(variant=stylegan3 for StyleGAN3's).")
    assert f"note: {note}\n" in capsys.readouterr().out
    assert f"**{note.replace('<name>', '&lt;name&gt;')}**" in (root / "report/report.md").read_text().splitlines()
    assert _Run.summary["notes"] == note


def test_a_cell_averaging_runs_that_differ_in_more_than_the_seed_is_named_with_the_settings_that_differ(
        tmp_path, capsys):
    # seeds 0-2 trained 30 epochs, then a quick check with seed 3 and 1 epoch: its accuracy joined their mean unnoticed
    root = tmp_path / "artifacts"
    for seed, (epochs, accuracy, workers) in enumerate([(30, 0.9, 0), (30, 0.8, 4), (30, 0.85, 0), (1, 0.2, 0)]):
        config = {"seed": seed, "stage": {"max_epochs": epochs, "lr": 1e-4, "num_workers": workers,
                                          "artifact_name": f"classify_squeezenet_a0.4_none_seed{seed}"},
                  "classifier": {"name": "squeezenet"}, "dataset": {"name": "neu", "root": f"/data{seed}"}}
        _result(root, "classify", "neu", None, "default",
                {"test_accuracy": accuracy, "classifier": "squeezenet", "alpha": 0.4, "mode": "none"},
                name=f"classify_squeezenet_a0.4_none_seed{seed}", config=config)
    _result(root, "classify", "neu", None, "default",  # one result in its cell: nothing to compare
            {"test_accuracy": 0.7, "classifier": "resnet", "alpha": 0.4, "mode": "none"}, name="classify_resnet",
            config={"stage": {"max_epochs": 5}})
    assert report.main(["--artifacts", str(root)]) == 0
    printed = capsys.readouterr()
    note = ("Cells averaging results that differ in more than the seed, which do not belong in one mean: "
            "None (real only) / SqueezeNet (stage.max_epochs). Rerun them alike, or move the odd run to another variant.")
    assert (root / "report/table6_accuracy.md").read_text().endswith(f"\n{note}\n\n{ON_MACHINE}\n")
    assert f"warning: table6_accuracy: {note}\n" in printed.err
    assert "fig9_substitution" in printed.err, "Fig. 9's real-only bars read the same results"
    assert "table5_fid" not in printed.err and "Cells averaging" not in (root / "report/table5_fid.md").read_text()


def test_results_made_with_a_random_weight_stand_in_for_sd15_say_so_at_the_top(tmp_path, monkeypatch, capsys):
    import wandb

    monkeypatch.setattr(wandb, "init", lambda **kwargs: _Run())
    monkeypatch.setattr(_Run, "summary", {})
    root = tmp_path / "artifacts"
    for stage, model in (("ti", "tiny"), ("lora", "tiny"), ("generate", "sd15_random"), ("generate", "sd15")):
        _result(root, stage, "neu", "Pa", model, {}, name=f"{stage}_run", config={"model": {"name": model}})
    _result(root, "classify", "neu", None, "default", {"test_accuracy": 0.9}, config={"model": {"name": "tiny"}})
    assert report.main(["--artifacts", str(root), "--wandb", str(tmp_path / "logs")]) == 0
    said = ("Made with random-weight stand-ins for SD1.5 (model=sd15_random: 1 run, model=tiny: 2 runs): the values show "
            "that the pipeline runs, not what the method achieves; the paper's come from SD1.5's trained weights "
            "(model=sd15).")
    assert f"note: {said}\n" in capsys.readouterr().out, "a classifier's model setting is not what made its images"
    assert (root / "report/report.md").read_text().split("\n")[4] == f"**{said}**"
    assert _Run.summary["notes"] == said

    real = tmp_path / "real"
    _result(real, "generate", "neu", "Pa", "default", {}, name="sweep_s0.5_g5", config={"model": {"name": "sd15"}})
    assert report.main(["--artifacts", str(real)]) == 0
    assert "note:" not in capsys.readouterr().out and "stand-in" not in (real / "report/report.md").read_text()


def test_dataset_option_reads_the_neu_tables_on_another_dataset(tree):
    assert report.main(["--artifacts", str(tree), "--dataset", "synthetic"]) == 0
    fid = _csv(tree / "report/table5_fid.csv")
    assert float(fid["StableSDG"]["Pa ours"]) == 7.0 and fid["StableSDG"]["Cr ours"] == ""


def test_on_a_dataset_of_your_own_the_per_class_tables_take_its_classes_as_columns(tree, capsys):
    _result(tree, "fid", "mine", "spot", "default", {"fid": 12.5})
    _result(tree, "fid", "mine", "scratch", "default", {"fid": 9.0})
    _result(tree, "fid", "mine", "Pa", "ti_only", {"fid": 30.0})
    assert report.main(["--artifacts", str(tree), "--dataset", "mine"]) == 0
    fid = _csv(tree / "report/table5_fid.csv")
    assert [key for key in fid["StableSDG"] if key.endswith(" ours")] == ["Pa ours", "scratch ours", "spot ours"]
    assert (fid["StableSDG"]["scratch ours"], fid["StableSDG"]["spot ours"], fid["Textual Inversion"]["Pa ours"]) == \
        ("9.0", "12.5", "30.0")
    assert (tree / "report/table5_fid.md").read_text().startswith("### Table V: FID per NEU category (ours on dataset mine)")
    capsys.readouterr()
    assert report.main(["--artifacts", str(tree)]) == 0
    said = "no table reads the results of mine (3 results), synthetic (1 result): --dataset mine reads the NEU tables on " \
           "mine, and likewise for the other"
    assert f"note: {said}\n" in capsys.readouterr().out and f"**{said}**" in (tree / "report/report.md").read_text()
    neu_layout = [f"{c} ours" for c in ("Cr", "In", "Pa", "PS", "RS", "Sc")]
    assert list(_csv(tree / "report/table5_fid.csv")["StableSDG"])[1::4] == neu_layout


def test_every_paper_table_spec_is_complete():
    for key, spec in paper_tables().items():
        assert spec["rows"] and spec["columns"] and "title" in spec, key
        assert spec.get("metric") or all("metric" in c for c in spec["columns"].values()), key
        for row, values in (spec.get("paper") or {}).items():
            assert row in spec["rows"] and set(values) <= set(spec["columns"]), key


def _generated_sets(root, sets):
    """A 3-image generated set of the synthetic dataset for each ``(category, variant, shade)`` of ``sets``, made by
    ``stage=generate``, or by the stage a fourth item names (``sample``, ``external``) in the same layout; a fifth
    names the folder (a sweep point's)."""
    cfg = compose_config([f"paths.artifacts={root}"])
    dataset = json.loads(json.dumps(__import__("omegaconf").OmegaConf.to_container(cfg.dataset, resolve=True)))
    for category, variant, shade, *made_by in sets:
        stage, folder = (*made_by, "generate", "generate")[:2]
        directory = artifacts.stage_dir(root, "synthetic", category, variant, folder)
        (directory / "images").mkdir(parents=True)
        for i in range(3):
            Image.new("L", (64, 64), shade).save(directory / f"images/{i:05d}.png")
        (directory / "manifest.csv").write_text("file\n" + "".join(f"images/{i:05d}.png\n" for i in range(3)))
        artifacts.write_result(directory, stage=stage, dataset="synthetic", category=category, variant=variant,
                               metrics={}, config={"dataset": dataset}, wall_time_s=0.0)


def test_grid_shows_real_images_above_each_generated_set(tmp_path):
    root = tmp_path / "artifacts"
    _generated_sets(root, [("Sc", "default", 40), ("Sc", "ti_only", 200)])
    assert report.main(["--artifacts", str(root)]) == 0
    image = Image.open(root / "report/grids/synthetic_Sc.png").convert("L")
    margin = image.width - (8 * 130 + 2)  # the labels' column
    grid = image.crop((margin, 0, image.width, image.height))
    assert margin > 0 and grid.size == (8 * 130 + 2, 3 * 130 + 2), "8 columns; rows: real, default, ti_only"
    assert grid.getpixel((60, 130 + 60)) == 40 and grid.getpixel((60, 260 + 60)) == 200
    assert grid.getpixel((3 * 130 + 60, 130 + 60)) == 255, "a short set leaves its row's remaining tiles blank"
    for row in range(3):  # each row's label is written beside it
        assert image.crop((0, 2 + 130 * row, margin, 130 * (row + 1))).getextrema()[0] < 128
    assert "rows: real, default, ti_only" in (root / "report/report.md").read_text()


def test_grid_shows_the_sets_of_the_baselines_too_but_no_sweep_point(tmp_path):
    root = tmp_path / "artifacts"
    _generated_sets(root, [("Sc", "default", 40), ("Sc", "dcgan", 120, "sample"), ("Sc", "stylegan3", 160, "external"),
                           ("Sc", "default", 200, "generate", "sweep_s0.5_g5")])
    assert report.main(["--artifacts", str(root)]) == 0
    image = Image.open(root / "report/grids/synthetic_Sc.png").convert("L")
    grid = image.crop((image.width - (8 * 130 + 2), 0, image.width, image.height))
    assert grid.height == 4 * 130 + 2 and [grid.getpixel((60, 130 * row + 60)) for row in (1, 2, 3)] == [120, 40, 160]
    assert "rows: real, dcgan, default, stylegan3" in (root / "report/report.md").read_text()


def test_a_store_moved_since_its_runs_draws_its_real_rows_by_its_own_split_and_writes_nothing_where_it_was(tmp_path):
    made = tmp_path / "cluster/artifacts"
    _generated_sets(made, [("Sc", "default", 40)])
    assert report.main(["--artifacts", str(made)]) == 0  # the split file, made in the store the runs wrote
    split = next((made / "synthetic/splits").glob("split-*.json"))
    moved = tmp_path / "laptop/artifacts"
    moved.parent.mkdir()
    made.rename(moved)
    assert report.main(["--artifacts", str(moved)]) == 0
    assert not made.exists(), "nothing written where the store was when its runs recorded their settings"
    assert sorted(p.name for p in (moved / "synthetic/splits").iterdir()) == [split.name]
    image = Image.open(moved / "report/grids/synthetic_Sc.png").convert("L")
    grid = image.crop((image.width - (8 * 130 + 2), 0, image.width, image.height))
    assert grid.height == 2 * 130 + 2 and grid.getpixel((60, 130 + 60)) == 40, "rows: real, default"
    assert grid.crop((2, 2, 8 * 130, 128)).getextrema() != (255, 255), "the real row holds images"


def test_a_grid_whose_real_images_are_not_where_its_runs_read_them_has_no_real_row_and_says_where(tmp_path, caplog):
    root = tmp_path / "artifacts"
    _generated_sets(root, [("Sc", "default", 40)])
    result = root / "synthetic/Sc/default/generate/result.json"
    record = json.loads(result.read_text())
    record["config"]["dataset"]["root"] = str(tmp_path / "gone")  # read on another machine than its runs'
    result.write_text(json.dumps(record))
    assert report.main(["--artifacts", str(root)]) == 0
    assert [r.getMessage() for r in caplog.records if r.name == "stablesdg.grids"] == [
        f"grid synthetic/Sc: no real row (the images its runs read, in {tmp_path / 'gone'}, are not there; give "
        "--dataset-root synthetic=<the folder they are in now>)"]
    assert "rows: default" in (root / "report/report.md").read_text()
    assert not (root / "synthetic/splits").exists(), "no split made for images it did not read"


def test_a_grids_real_row_comes_from_where_its_dataset_is_now_given_by_dataset_root_or_its_environment_variable(
        tmp_path, neu_path, monkeypatch, capsys):
    root = tmp_path / "artifacts"
    _generated_sets(root, [("Sc", "default", 40)])
    result = root / "synthetic/Sc/default/generate/result.json"
    record = json.loads(result.read_text())
    neu = OmegaConf.to_container(compose_config(["dataset=neu", f"dataset.root={tmp_path / 'moved-away'}"]).dataset,
                                 resolve=True)
    result.write_text(json.dumps({**record, "dataset": "neu", "config": {"dataset": neu}}))
    layout = root / "neu/Sc/default"
    layout.parent.mkdir(parents=True)
    (root / "synthetic/Sc/default").rename(layout)
    for emptied in (root / "synthetic/Sc", root / "synthetic"):
        emptied.rmdir()
    monkeypatch.delenv("STABLESDG_NEU_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)  # where the config's default, data/NEU-DET, holds nothing

    def real_row() -> bool:
        image = Image.open(root / "report/grids/neu_Sc.png").convert("L")
        grid = image.crop((image.width - (8 * 130 + 2), 0, image.width, image.height))
        return grid.height == 2 * 130 + 2 and grid.crop((2, 2, 8 * 130, 128)).getextrema() != (255, 255)

    assert report.main(["--artifacts", str(root)]) == 0
    assert "rows: default" in (root / "report/report.md").read_text() and not real_row()
    assert report.main(["--artifacts", str(root), "--dataset-root", f"neu={neu_path}"]) == 0
    assert "rows: real, default" in (root / "report/report.md").read_text() and real_row()
    (root / "report").rename(tmp_path / "by-flag")
    monkeypatch.setenv("STABLESDG_NEU_ROOT", str(neu_path))
    assert report.main(["--artifacts", str(root)]) == 0
    assert "rows: real, default" in (root / "report/report.md").read_text() and real_row(), "by $STABLESDG_NEU_ROOT"
    assert (root / "report/grids/neu_Sc.png").read_bytes() == (tmp_path / "by-flag/grids/neu_Sc.png").read_bytes()
    capsys.readouterr()
    assert report.main(["--artifacts", str(root), "--dataset-root", f"nue={neu_path}"]) == 2
    assert capsys.readouterr().err == f"error: --dataset-root nue: {root} holds no artifacts of it (it holds: neu)\n"
    for wrong, said in (("neu", "'neu' is not NAME=DIR (e.g. neu=/data/NEU-DET)"),
                        (f"neu={tmp_path / 'nowhere'}", f"{tmp_path / 'nowhere'} is not a folder")):
        with pytest.raises(SystemExit) as refused:
            report.main(["--artifacts", str(root), "--dataset-root", wrong])
        assert (refused.value.code, capsys.readouterr().err) == (2, f"error: argument --dataset-root: {said}\n")


def test_the_grids_of_every_category_read_their_dataset_once(tmp_path, monkeypatch):
    from stablesdg.data.sources import SyntheticSource

    root = tmp_path / "artifacts"
    _generated_sets(root, [("Sc", "default", 40), ("Pa", "default", 90), ("Cr", "default", 140)])
    scans = []
    scan = SyntheticSource.scan
    monkeypatch.setattr(SyntheticSource, "scan", lambda self: scans.append(self) or scan(self))
    assert report.main(["--artifacts", str(root)]) == 0
    assert len(scans) == 1, "one scan, so each of the dataset's warnings is said once"
    assert sorted(p.name for p in (root / "report/grids").iterdir()) == ["synthetic_Cr.png", "synthetic_Pa.png",
                                                                        "synthetic_Sc.png"]


def test_labelled_grid_gives_each_row_its_own_band_and_its_label():
    import torch

    from stablesdg.grids import labelled_grid

    gray = [torch.full((1, 20, 20), value / 255) for value in (40, 80, 120)]  # float, one channel
    rgb = [torch.full((3, 20, 20), 200, dtype=torch.uint8)]
    image = labelled_grid([gray, rgb, []], ["first", "a longer second", "empty"]).convert("L")
    margin = image.width - (3 * 22 + 2)
    tiles = image.crop((margin, 0, image.width, image.height))
    assert margin > 0 and tiles.size == (3 * 22 + 2, 3 * 22 + 2)
    assert [tiles.getpixel((2 + 22 * column + 10, 12)) for column in range(3)] == [40, 80, 120]
    assert tiles.getpixel((12, 22 + 12)) == 200 and tiles.getpixel((22 + 12, 22 + 12)) == 255, "short row: blank tiles"
    assert tiles.crop((0, 2 * 22 + 2, tiles.width, tiles.height)).getextrema() == (255, 255), "an empty row: all blank"
    bands = [image.crop((0, 2 + 22 * row, margin, 22 * (row + 1))) for row in range(3)]
    assert all(band.getextrema()[0] < 128 for band in bands), "every row has its label"
    shorter = labelled_grid([gray, rgb, []], ["first", "second", "empty"])
    assert shorter.width < image.width, "the labels' column fits the longest label"
    with pytest.raises(ValueError, match="one label per row"):
        labelled_grid([gray], ["a", "b"])


def test_wandb_gets_one_table_per_paper_table(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert report.main(["--artifacts", str(tree), "--wandb", str(tmp_path / "logs")]) == 0
    tables = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "logs").rglob("*.table.json")}
    assert set(tables) == set(paper_tables()), "one W&B table per paper table, each under its own key"
    fid = tables["table5_fid"]
    row = next(r for r in fid["data"] if r[0] == "StableSDG")
    assert dict(zip(fid["columns"], row)) == {"row": "StableSDG", "Cr": 60.25, "In": None, "Pa": 41.5, "PS": None,
                                             "RS": None, "Sc": None}, "missing cells are null, never 0"


class _Run:
    """What the report uses of a W&B run: an offline run keeps its summary in a binary file."""

    summary: dict = {}

    def log(self, data):
        pass

    def finish(self):
        pass


def test_wandb_gets_the_notes_under_each_table_and_starts_in_a_folder_that_exists(tmp_path, monkeypatch):
    import wandb

    folders = []  # in a folder not there yet, W&B warned that the folder was no git root
    monkeypatch.setattr(wandb, "init", lambda **kwargs: folders.append(Path(kwargs["dir"]).is_dir()) or _Run())
    monkeypatch.setattr(_Run, "summary", {})
    root = tmp_path / "artifacts"
    _result(root, "fid", "neu", "Pa", "default", {"fid": 41.5, "features": "pixels", "n_fake": 64})
    assert report.main(["--artifacts", str(root), "--wandb", str(tmp_path / "logs")]) == 0
    assert folders == [True]
    notes = _Run.summary
    expected = ("Our FID/KID values: stage.features=pixels, 64 generated images per set; they rank runs of this tool "
                f"against each other and do not compare with the paper's (InceptionV3 features). {ON_MACHINE}")
    assert notes == {f"{key}/notes": expected for key in ("table2_ablation", "table3_prompts", "table5_fid")}


def test_a_wandb_mode_wandb_refuses_is_one_line_before_any_report_file(tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "Offline")
    assert report.main(["--artifacts", str(tree), "--wandb", str(tmp_path / "logs")]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: WANDB_MODE must be online, offline or disabled (W&B's modes), got 'Offline'"
    assert not (tree / "report").exists()


def test_wandb_online_without_an_api_key_is_one_line_before_any_report_file(tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert report.main(["--artifacts", str(tree), "--wandb", str(tmp_path / "logs")]) == 2
    assert capsys.readouterr().err == ("error: WANDB_MODE=online needs a W&B API key and none is set: set WANDB_API_KEY "
                                       "or run `wandb login`, or log offline (WANDB_MODE=offline) and upload later "
                                       "with `wandb sync`\n")
    assert not (tree / "report").exists()


def test_an_empty_store_gives_empty_tables_and_no_figures_and_says_why(tmp_path, capsys):
    assert report.main(["--artifacts", str(tmp_path)]) == 0
    assert not list((tmp_path / "report").glob("*.png"))
    assert set(_csv(tmp_path / "report/table5_fid.csv")["StableSDG"].values()) == {"StableSDG", ""}
    why = (f"{tmp_path} holds no result.json, so every table is empty: run the stages first (make quickstart, or "
           "python -m stablesdg.train stage=pipeline ...), or name the store they wrote with --artifacts")
    assert capsys.readouterr().err == f"warning: {why}\n"
    assert f"**{why}**" in (tmp_path / "report/report.md").read_text()


def test_missing_artifact_folder_is_one_line_for_every_command(tmp_path, capsys):
    for command in ([], ["status"], ["sweep", "--dataset", "neu"]):
        assert report.main([*command, "--artifacts", str(tmp_path / "nope")]) == 2, command
        assert capsys.readouterr().err.strip() == f"error: --artifacts {tmp_path / 'nope'} is not a folder", command
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("command, code", [(["status"], 0), (["sweep", "--dataset", "neu"], 0)])
def test_the_store_listing_and_the_sweep_aggregation_run_without_loading_torch(tree, command, code):
    probe = ("import sys\nfrom stablesdg import report\n"
             f"code = report.main([*{command!r}, '--artifacts', {str(tree)!r}])\nprint(code, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[-2:] == [str(code), "False"], done.stderr


def test_ctrl_c_while_the_report_is_written_is_one_line_with_the_shells_code(tree, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(grids, "comparison_grids", interrupted)  # after the tables' files, before report.md
    assert report.main(["--artifacts", str(tree)]) == 130
    assert capsys.readouterr().err.strip() == (
        "error: python -m stablesdg.report tables stopped by Ctrl-C; run the same command again to finish it")


def test_a_dataset_with_no_artifacts_is_one_line_naming_the_datasets_the_store_holds(tmp_path, capsys):
    (tmp_path / "synthetic" / "Pa").mkdir(parents=True)
    assert report.main(["--artifacts", str(tmp_path), "--dataset", "synthetc"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --dataset synthetc: {tmp_path} holds no artifacts of it (it holds: synthetic)"
    assert not (tmp_path / "report").exists()
    assert report.main(["--artifacts", str(tmp_path), "--dataset", ".."]) == 2
    assert capsys.readouterr().err.strip() == "error: dataset='..' cannot name an artifact directory (empty, '/', '.' or '..')"
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("words, advice", [
    (["status", "paths.artifacts=my store"], "; here: --artifacts 'my store'"),
    (["dataset=neu"], "; here: --dataset neu"),
    (["sweep", "--dataset", "neu", "variant=v2"], "; here: --variant v2"),
    (["trainer=gpu"], " (python -m stablesdg.report --help lists them)")])
def test_a_setting_written_as_stablesdg_train_takes_it_names_the_reports_option(tmp_path, monkeypatch, capsys, words,
                                                                                advice):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        report.main(words)
    word = next(w for w in words if "=" in w)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"error: {word}: the report takes options (--artifacts, --dataset, ...), not key=value settings{advice}\n")
    assert not list(tmp_path.iterdir()), "nothing written"


@pytest.mark.parametrize("argv, said", [
    (["--bogus"], "unrecognized arguments: --bogus (--help lists the options)"),
    (["sweep"], "the following arguments are required: --dataset"),
    (["sweep", "--dataset", "neu", "--metric", "fid_score"],
     "argument --metric: invalid choice: 'fid_score' (choose from 'fid', 'kid_mean')"),
])
def test_a_command_line_the_report_cannot_read_is_one_line_without_the_usage(tmp_path, monkeypatch, capsys, argv, said):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as refused:
        report.main(argv)
    assert (refused.value.code, capsys.readouterr().err) == (2, f"error: {said}\n")
    with pytest.raises(SystemExit) as helped:
        report.main(["sweep", "--help"])
    assert helped.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m stablesdg.report sweep ")


def test_a_folder_named_like_a_setting_is_a_folder_where_an_option_takes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run=3").mkdir()
    assert report.main(["status", "--artifacts", "run=3"]) == 0


def test_folder_options_from_home_are_read_and_written_under_home(tmp_path, monkeypatch):
    # --artifacts=~/store: the shell expands a ~ only at the start of a word
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home/store/synthetic/Pa").mkdir(parents=True)
    assert report.main(["--artifacts=~/store", "--out=~/tables", "--dataset", "synthetic"]) == 0
    assert (tmp_path / "home/tables/report.md").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["home"], "no folder named ~ where the command ran"


@pytest.mark.parametrize("command, option", [("tables", "--artifacts"), ("tables", "--out"), ("tables", "--wandb"),
                                             ("status", "--artifacts"), ("sweep", "--artifacts")])
def test_an_empty_folder_option_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch, capsys, command, option):
    # `--artifacts $STORE` with STORE unset: the report would read and write the current folder
    (tmp_path / "store").mkdir()
    monkeypatch.chdir(tmp_path)
    arguments = {"--artifacts": "store", **({"--dataset": "neu"} if command == "sweep" else {}), option: ""}
    with pytest.raises(SystemExit) as exit_:
        report.main([command, *[a for pair in arguments.items() for a in pair]])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == \
        f"error: argument {option}: names no folder (an unset shell variable leaves it empty)\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["store"], "nothing written"


@pytest.mark.parametrize("option", ["--out", "--wandb", "--artifacts"])
@pytest.mark.parametrize("name, reason", [("a_file/report", "cannot be made: {file} is a file, not a folder"),
                                          ("a_file", "is a file, not a folder")])
def test_a_folder_option_naming_a_file_or_a_path_inside_one_is_one_line_before_anything_is_written(
        tmp_path, capsys, option, name, reason):
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "a_file").write_text("")
    arguments = {"--artifacts": str(tmp_path / "artifacts"), option: str(tmp_path / name)}
    with pytest.raises(SystemExit) as exit_:
        report.main([a for pair in arguments.items() for a in pair])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (f"error: argument {option}: {tmp_path / name} "
                                       + reason.format(file=tmp_path / "a_file") + "\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "artifacts"]
    assert list((tmp_path / "artifacts").iterdir()) == [] and (tmp_path / "a_file").read_text() == ""


@pytest.mark.parametrize("option, value", [("--variant", "../Pa/default"), ("--variant", ".."), ("--dataset", "neu/..")])
def test_sweep_refuses_a_dataset_or_variant_that_is_not_one_folder_name_before_writing(tree, capsys, option, value):
    before = sorted(p for p in tree.rglob("*"))
    arguments = {"--dataset": "neu", "--variant": "default", option: value}
    assert report.main(["sweep", "--artifacts", str(tree), *[a for pair in arguments.items() for a in pair]]) == 2
    key = option.removeprefix("--")
    assert capsys.readouterr().err.strip() == \
        f"error: {key}={value!r} cannot name an artifact directory (empty, '/', '.' or '..')"
    assert sorted(p for p in tree.rglob("*")) == before, "nothing written"


def test_a_damaged_result_is_skipped_with_a_warning_naming_it_and_the_others_still_count(tree, caplog, capsys):
    damaged = tree / "neu/Pa/default/fid/result.json"
    damaged.write_text(damaged.read_text()[:40])  # copied in part
    foreign = tree / "neu/Cr/default/notes/result.json"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("[]")
    assert report.main(["--artifacts", str(tree)]) == 0
    skipped = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "skipped" in r.getMessage()]
    assert len(skipped) == 2
    assert skipped[0].startswith(f"skipped {foreign}: it is not a stage's result")
    assert skipped[1].startswith(f"skipped {damaged}: it cannot be read as JSON")
    fid = _csv(tree / "report/table5_fid.csv")
    assert fid["StableSDG"]["Pa ours"] == "" and float(fid["StableSDG"]["Cr ours"]) == 60.25


def test_sweep_skips_a_damaged_cell_with_a_warning_and_picks_from_the_others(tree, caplog, capsys):
    damaged = tree / "neu/Pa/default/sweep_s0.5_g5/result.json"
    damaged.write_text("{")
    assert report.main(["sweep", "--artifacts", str(tree), "--dataset", "neu"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "Pa: strength 0.3, guidance_scale 3, fid 50.0000"
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.levelname == "WARNING"] == [f"skipped {damaged}"]


def test_sweep_picks_among_the_points_scored_like_the_newest_and_warns_of_the_others(tree, caplog, capsys):
    def finished(folder, ns):  # when its result says it was written (a copied store keeps it, not the file's time)
        record = json.loads((folder / "result.json").read_text())
        (folder / "result.json").write_text(json.dumps({**record, "finished_ns": ns}))
        os.utime(folder / "result.json", ns=(2**62 - ns, 2**62 - ns))  # the file times say the opposite

    for folder in (tree / "neu/Pa/default").glob("sweep_*"):  # the fixture's points: an earlier, smaller sweep
        finished(folder, 1)
    for s, g, fid in [(0.7, 5, 45.0), (0.3, 5, 40.0)]:
        _result(tree, "generate", "neu", "Pa", "default", {"fid": fid, "strength": s, "guidance_scale": g},
                name=f"sweep_s{s}_g{g}", config={"seed": 0, "stage": {"num_images": 200, "strength": s,
                                                                      "guidance_scale": g, "batch_size": 8}})
    finished(tree / "neu/Pa/default/sweep_s0.3_g5", 2)
    finished(tree / "neu/Pa/default/sweep_s0.7_g5", 3)  # the newest
    assert report.main(["sweep", "--artifacts", str(tree), "--dataset", "neu"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "Pa: strength 0.3, guidance_scale 5, fid 40.0000", \
        "not the earlier sweep's 30.0, whose score does not compare"
    with open(tree / "neu/sweeps/default/fid_Pa.csv", newline="") as handle:
        assert [row[0] for row in csv.reader(handle)] == ["strength \\ guidance_scale", "0.3", "0.7"]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "sweep of Pa: 2 of its 4 points were scored with other settings than sweep_s0.7_g5, the newest (seed, "
        "stage.num_images) and are left out; delete their folders, or sweep into another variant, to keep sweeps apart"]

    from stablesdg.sweeps import aggregate_sweep, scoring_settings

    retrained = {"metrics": {"adapter_checksums": {"lora": {"pytorch_lora_weights.safetensors": "b" * 64}}}}
    assert scoring_settings(retrained) != scoring_settings({}), "points made with a retrained LoRA do not compare"
    point = {"config": {"stage": {"num_images": 200, "runner": "stablesdg.stages.generate.run", "resume": True}}}
    moved = {"config": {"stage": {"num_images": 200, "runner": "stablesdg.generation.run", "resume": False,
                                  "objective": "fid"}}}
    assert scoring_settings(moved) == scoring_settings(point), "where the code lives and how the run went do not count"
    caplog.clear()  # a pipeline names one of its own points: the points scored like it
    best = aggregate_sweep(tree, "neu", like=tree / "neu/Pa/default/sweep_s0.5_g5")
    assert best == {"Pa": {"strength": 0.5, "guidance_scale": 5, "fid": 30.0}}
    assert [r.getMessage().split(" (")[0] for r in caplog.records if r.levelname == "WARNING"] == [
        "sweep of Pa: 2 of its 4 points were scored with other settings than sweep_s0.5_g5"]


def test_an_aggregation_waiting_for_another_reads_the_points_finished_meanwhile(tree):
    # the pipelines of categories run side by side each aggregate the variant's sweep as theirs ends: were the two
    # to overlap, the one that read first could write last, without the other's newest points
    import threading

    import yaml
    from filelock import FileLock

    from stablesdg.sweeps import aggregate_sweep

    other = FileLock(str(tree / "neu/.sweeps-default.lock"))
    other.acquire()
    aggregated = {}
    waiting = threading.Thread(target=lambda: aggregated.update(aggregate_sweep(tree, "neu")))
    waiting.start()
    waiting.join(timeout=1.0)
    assert waiting.is_alive() and not (tree / "neu/sweeps/default/tuned_generation.yaml").exists(), "it waits its turn"
    _result(tree, "generate", "neu", "Pa", "default", {"fid": 10.0, "strength": 0.4, "guidance_scale": 6, "init": "image"},
            name="sweep_s0.4_g6")  # finished while it waited
    other.release()
    waiting.join(timeout=60)
    assert aggregated == {"Pa": {"strength": 0.4, "guidance_scale": 6, "fid": 10.0}}
    assert yaml.safe_load((tree / "neu/sweeps/default/tuned_generation.yaml").read_text()) == aggregated
    assert not list((tree / "neu").glob(".sweeps-*")), "no lock file is left in the store"


def test_a_result_records_the_stages_it_read_and_is_stale_once_one_is_remade_with_another_output(tmp_path, capsys,
                                                                                                 caplog):
    root = tmp_path / "artifacts"

    def train_ti(weights: bytes) -> None:
        directory = artifacts.stage_dir(root, "neu", "Pa", "default", "ti")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "learned_embeds.safetensors").write_bytes(weights)
        _result(root, "ti", "neu", "Pa", "default", {"loss": 0.1})

    def lora_state() -> list[str]:
        assert report.main(["status", "--artifacts", str(root)]) == 0
        lines = capsys.readouterr().out.splitlines()
        return [*next(line.split(None, 2)[1:] for line in lines if line.startswith("neu/Pa/default/lora ")), lines[-1]]

    train_ti(b"weights")
    with artifacts.recording_reads() as read:
        artifacts.finished_stage_dir(root, "neu", "Pa", "default", "ti", "stage=lora")
    lora = artifacts.stage_dir(root, "neu", "Pa", "default", "lora")
    artifacts.write_result(lora, stage="lora", dataset="neu", category="Pa", variant="default", metrics={},
                           config={}, wall_time_s=1.0, inputs=artifacts.store_relative(read.stages, root))
    recorded = artifacts.read_result(lora)["inputs"]
    assert recorded == {"neu/Pa/default/ti": artifacts.output_fingerprint(root / "neu/Pa/default/ti")}
    assert lora_state()[0] == "finished"
    with caplog.at_level(logging.WARNING, logger="stablesdg.artifacts"), artifacts.recording_reads():
        artifacts.finished_stage_dir(root, "neu", "Pa", "default", "lora", "stage=generate")
    assert not caplog.records, "an input made from what its inputs hold now"
    moved = tmp_path / "moved"
    root.rename(moved)
    root = moved
    train_ti(b"weights")  # trained again to the same weights, in a moved store
    assert lora_state()[0] == "finished"
    train_ti(b"other weights")
    state, detail, counts = lora_state()
    assert state == "stale" and detail.endswith(" from neu/Pa/default/ti, remade or removed since; run the stage again")
    assert counts == "1 finished, 1 stale"
    with caplog.at_level(logging.WARNING, logger="stablesdg.artifacts"), artifacts.recording_reads() as read:
        for _ in range(2):  # by a run's checks, then by its work
            artifacts.finished_stage_dir(root, "neu", "Pa", "default", "lora", "stage=generate")
    assert list(read.stages) == [(root / "neu/Pa/default/lora").resolve()], "read as it is"
    assert [r.getMessage() for r in caplog.records] == [  # once
        f"{(root / 'neu/Pa/default/lora').resolve()} was made from neu/Pa/default/ti, remade or removed since; this run reads it "
        "as it is (run its stage again first to read it up to date)"]
    (root / "neu/Pa/default/ti/result.json").unlink()
    assert lora_state()[0] == "stale", "an input that has no finished result any more"


def test_status_says_which_stage_folders_are_finished_running_unfinished_or_damaged(tree, capsys):
    from filelock import FileLock

    _result(tree, "fid", "neu", "PS", "default", {"fid": 70.0})
    stopped = tree / "neu/Sc/default/ti"
    (stopped / "checkpoints").mkdir(parents=True)
    (stopped / "checkpoints/last.ckpt").write_bytes(b"state")
    (stopped / ".lock").write_text("")  # left by the killed run: not held
    (stopped / ".lock.owner").write_text('{"host": "gpu03", "pid": 7, "job": null}')  # and its record
    requeued = tree / "neu/Cr/default/ti/checkpoints"  # stopped on SLURM's requeue signal before its first last.ckpt
    requeued.mkdir(parents=True)
    (requeued / "hpc_ckpt_1.ckpt").write_bytes(b"state")
    partial = tree / "neu/Sc/default/generate/images"
    partial.mkdir(parents=True)
    for i in range(3):
        (partial / f"{i:05d}.png").write_bytes(b"png")
    (tree / "neu/Pa/default/sweep_s0.5_g5/result.json").write_text("{")
    (tree / "neu/Pa/_cache/features").mkdir(parents=True)  # not stage folders
    (tree / "neu/splits/x").mkdir(parents=True)
    running = tree / "neu/Sc/default/lora"
    running.mkdir()
    (running / ".lock.owner").write_text('{"host": "gpu07", "pid": 48213, "job": {"kind": "slurm", "id": "91234", '
                                         '"part": "0"}}')
    with FileLock(str(running / ".lock"), timeout=0):
        assert report.main(["status", "--artifacts", str(tree)]) == 0
    lines = capsys.readouterr().out.splitlines()
    states = {line.split()[0]: line.split(None, 2)[1:] for line in lines[:-1]}
    finished = {"neu/Cr/default/fid", "neu/Pa/default/fid", "neu/Pa/ti_only/fid", "neu/Pa/lora_rank_4/lora",
                "neu/Pa/lora_rank_4/fid", "neu/Pa/default/sweep_s0.3_g3", "neu/all/default/classify_resnet_expand",
                *[f"neu/all/default/classify_squeezenet_a0.4_none_seed{seed}" for seed in range(3)],
                "synthetic/Pa/default/fid", "neu/PS/default/fid"}
    categories = [folder.split("/")[1] for folder in states if folder.startswith("neu/")]
    assert list(dict.fromkeys(categories)) == ["all", "Cr", "Pa", "PS", "Sc"], "by name, letter case aside"
    assert [folder for folder in states if folder.startswith("neu/Sc/")] == \
        ["neu/Sc/default/ti", "neu/Sc/default/lora", "neu/Sc/default/generate"], "stages in the order the method runs"
    assert [folder for folder in states if folder.startswith("neu/Pa/default/")] == \
        ["neu/Pa/default/sweep_s0.3_g3", "neu/Pa/default/sweep_s0.5_g5", "neu/Pa/default/fid"], "the sweep picks (s, ω) first"
    assert set(states) == finished | {"neu/Pa/default/sweep_s0.5_g5", "neu/Sc/default/ti", "neu/Sc/default/generate",
                                      "neu/Sc/default/lora", "neu/Cr/default/ti"}
    assert {folder for folder, (state, _) in states.items() if state == "finished"} == finished
    assert states["neu/Sc/default/lora"] == ["running", "a run is writing it now (process 48213 on gpu07 of SLURM job "
                                                        "91234)"]
    for stopped_training in ("neu/Sc/default/ti", "neu/Cr/default/ti"):
        assert states[stopped_training] == [
            "unfinished", "training stopped; the same command resumes it from its last checkpoint"]
    assert states["neu/Sc/default/generate"] == ["unfinished", "3 images so far; the same command completes the set"]
    assert states["neu/Pa/default/sweep_s0.5_g5"] == ["damaged", "result.json cannot be read (JSONDecodeError); run the stage again"]
    assert states["neu/Cr/default/fid"][0] == "finished" and states["neu/Cr/default/fid"][1].endswith(", in 1 s")
    assert lines[-1] == "12 finished, 1 running, 3 unfinished, 1 damaged"
    assert report.main(["status", "--artifacts", str(tree), "--dataset", "synthetic"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 finished"
    assert report.main(["status", "--artifacts", str(tree), "--dataset", "nue"]) == 2  # not "no stage folders"
    assert capsys.readouterr().err == f"error: --dataset nue: {tree} holds no artifacts of it (it holds: neu, synthetic)\n"


def test_a_class_name_the_font_lacks_is_one_warning_per_command_not_one_per_character_and_figure(tmp_path, caplog, recwarn):
    from stablesdg.plots import heatmap_png

    for name in ("a.png", "b.png"):
        heatmap_png(np.ones((2, 2)), ["划痕", "dent"], ["3", "5"], tmp_path / name, xlabel="ω", ylabel="s", title="划痕")
    assert [r.getMessage() for r in caplog.records if r.name == "stablesdg.plots"] == [
        "figures: the characters 划痕 are not in the font DejaVu Sans, so they show as boxes in the figures; name a font "
        "that has them in matplotlib's font.family (a matplotlibrc)"]
    assert not [w for w in recwarn if "Glyph" in str(w.message)]


def test_classifiers_of_the_same_network_compare_alike_whether_its_depth_was_left_null_or_named():
    from stablesdg.compare import compared_settings, differing_keys

    def settings(arch, depth):
        return compared_settings({"config": {"classifier": {"name": arch, "arch": arch, "depth": depth}}})

    assert differing_keys(settings("resnet", None), settings("resnet", 18)) == []
    assert differing_keys(settings("densenet", None), settings("densenet", 121)) == []
    assert differing_keys(settings("resnet", None), settings("resnet", 34)) == ["classifier.depth"]
    assert settings("squeezenet", None)["classifier"]["depth"] is None, "one size: no depth to name"


def test_results_differ_in_a_setting_only_one_has_unless_it_is_null_there():
    from stablesdg.compare import differing_keys

    made = {"stage": {"lr": 1e-4, "added_later": None, "prompt": {"text": "a"}}, "dataset": {"name": "neu"}}
    now = {"stage": {"lr": 2e-4, "prompt": {"text": "a"}, "num_images": 8}, "dataset": {"name": "neu"}, "seed": 0}
    assert differing_keys(made, now) == ["seed", "stage.lr", "stage.num_images"]
    assert differing_keys(now, now) == []
    assert differing_keys(made, {**made, "generation": {"Pa": {"strength": 0.5, "guidance_scale": None}}}) == \
        ["generation.Pa.strength"], "a group only one has: by its settings, a null one no difference"


def test_a_table_names_the_machines_its_values_were_computed_on_and_says_when_they_differ(tmp_path, capsys):
    root = tmp_path / "artifacts"
    h200 = {"cpu": "Intel Xeon", "cpu_capability": "AVX512", "cpu_threads": 16, "gpu": "NVIDIA H200", "cuda": "13.0"}
    for seed, machine in enumerate([MACHINE, MACHINE, h200, {**MACHINE, "cpu_threads": 1}]):
        _result(root, "classify", "neu", None, "default",
                {"test_accuracy": 0.9, "classifier": "alexnet", "alpha": 0.4, "mode": "none"},
                name=f"classify_alexnet_a0.4_none_seed{seed}", config={"seed": seed}, machine=machine)
    earlier = _result(root, "classify", "neu", None, "default",  # written before results recorded their machine
                      {"test_accuracy": 0.9, "classifier": "alexnet", "alpha": 0.4, "mode": "none"},
                      name="classify_alexnet_a0.4_none_seed9", config={"seed": 9})
    record = json.loads((earlier / "result.json").read_text())
    del record["machine"]
    (earlier / "result.json").write_text(json.dumps(record))
    assert report.main(["--artifacts", str(root)]) == 0
    assert (root / "report/table6_accuracy.md").read_text().endswith(
        "\nOur values were computed on 4 machines (1 value on AMD EPYC 9R14, AVX2, 1 thread; 2 on AMD EPYC 9R14, AVX2, "
        "2 threads; 1 on NVIDIA H200, CUDA 13.0; 1 on a machine not recorded): float rounding differs between CPU "
        "instruction sets and GPUs, so the same settings and seed give other values on another one.\n")
    assert "computed on" not in (root / "report/table5_fid.md").read_text(), "a table with no value names none"
