"""Every config in conf/, experiments/ and multirun_sweeps/ composes, and instantiates where it has a _target_."""

from __future__ import annotations

import logging
import re
import shlex
from unittest import mock

import pytest
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from conftest import CONFIG_DIR, REPO, SWEEP_DIR, compose_config
from stablesdg.errors import find_user_error
from stablesdg.pipeline import pipeline_categories
from stablesdg.pipeline_checks import check_pipeline_settings, check_steps
from stablesdg.pipeline_steps import ADAPTATIONS, METHOD_LISTS, Runner
from stablesdg.schema import config_groups

GROUPS = ["dataset", "model", "stage", "trainer", "logger", "paths", "method", "pipeline"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def test_every_group_has_its_documented_options():
    assert {"neu", "ccbsd", "folder", "synthetic"} <= set(_options("dataset"))
    assert {"sd15", "tiny", "sd15_random"} <= set(_options("model"))
    assert {"cpu", "gpu", "ddp"} <= set(_options("trainer"))
    assert {"wandb", "csv", "none"} <= set(_options("logger"))
    assert "inspect" in _options("stage")


def test_top_level_keys_and_defaults():
    cfg = compose_config()
    assert cfg.category is None and cfg.seed == 0 and cfg.variant == "default"
    assert cfg.paths.artifacts == "artifacts"
    assert (cfg.dataset.name, cfg.model.name, cfg.stage.name) == ("synthetic", "tiny", "inspect")
    assert cfg.logger._target_.endswith("WandbLogger")


REQUIRED_VALUES = {("dataset", "folder"): ["dataset.root=/data/mydefects"],
                   ("stage", "external"): ["stage.source=/data/samples"],
                   ("stage", "export"): ["stage.out=/data/neu_synthetic"]}


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_and_resolves(group):
    for option in _options(group):
        cfg = compose_config([f"{group}={option}", *REQUIRED_VALUES.get((group, option), [])])
        OmegaConf.resolve(cfg)
        assert not OmegaConf.missing_keys(cfg), f"{group}={option} leaves {OmegaConf.missing_keys(cfg)} unset"
        if group == "method":  # a method sets global keys: its variant names its artifacts
            assert cfg.variant == ("default" if option == "stablesdg" else option)
        else:
            assert bool(OmegaConf.select(cfg, group)) != ((group, option) == ("logger", "none"))


@pytest.mark.parametrize("option", _options("dataset"))
def test_dataset_configs_instantiate(option):
    overrides = [f"dataset={option}"] + (["dataset.root=/somewhere"] if option == "folder" else [])
    dm = instantiate(compose_config(overrides).dataset)
    assert dm.name == option and dm.image_size > 0 and dm.split_fractions and abs(sum(dm.split_fractions) - 1) < 1e-9


def test_dataset_split_defaults_follow_the_paper():
    assert compose_config(["dataset=neu"]).dataset.split.fractions == [0.8, 0.1, 0.1]
    ccbsd = compose_config(["dataset=ccbsd"]).dataset
    assert ccbsd.split.fractions == [0.7, 0.15, 0.15] and list(ccbsd.classes) == ["Inc", "Ind", "Ox", "SG"]
    assert list(compose_config(["dataset=neu"]).dataset.classes) == ["Cr", "In", "Pa", "PS", "RS", "Sc"]


@pytest.mark.parametrize("option", _options("model"))
def test_model_configs_point_at_callables(option):
    cfg = compose_config([f"model={option}"])
    assert callable(get_method(cfg.model._target_))
    assert cfg.model.resolution in (64, 512)


def test_sd15_config_without_weights_instantiates_to_a_clear_error(monkeypatch):
    monkeypatch.delenv("STABLESDG_SD15_PATH", raising=False)
    with pytest.raises(Exception) as info:
        instantiate(compose_config(["model=sd15"]).model)
    assert "model=sd15 needs weights" in str(find_user_error(info.value))


@pytest.mark.parametrize("option", _options("stage"))
def test_stage_configs_name_a_runner_and_checks_their_defaults_pass(option, tmp_path):
    # folders only their user can name
    given = {"external": [f"stage.source={tmp_path}"], "export": [f"stage.out={tmp_path}/export"]}.get(option, [])
    cfg = compose_config([f"stage={option}", "category=null" if option == "classify" else "category=Pa", *given])
    assert cfg.stage.name == option
    assert callable(get_method(cfg.stage.runner))
    if option not in ("inspect", "pipeline"):  # these two read no stage settings that could be out of range
        get_method(cfg.stage.checks)(cfg)


def test_trainer_configs_instantiate(tmp_path):
    for option in _options("trainer"):
        cfg = compose_config([f"trainer={option}", f"paths.logs={tmp_path}"])
        assert get_class(cfg.trainer._target_).__name__ == "Trainer"
        # No GPU on CI: instantiate every trainer on the CPU, keeping its strategy and precision family.
        overrides = {"accelerator": "cpu", "precision": "32-true" if cfg.trainer.precision == "32-true" else "bf16-mixed"}
        trainer = instantiate(cfg.trainer, **overrides, logger=False, devices=1 if option != "ddp" else 2)  # as stages do
        assert (trainer.precision, trainer.num_devices) == (overrides["precision"], 1 if option != "ddp" else 2)
    ddp = compose_config(["trainer=ddp"]).trainer
    assert ddp.strategy == "ddp" and ddp.devices == 2


def test_each_short_precision_name_make_reads_as_another_trains_as_that_one():
    from lightning import Trainer

    from stablesdg.provenance import PRECISION_ALIASES

    def trained_as(precision):
        return Trainer(precision=precision, accelerator="cpu", logger=False, enable_checkpointing=False,
                       enable_progress_bar=False).precision

    for alias, name in PRECISION_ALIASES.items():
        assert trained_as(alias) == trained_as(name), alias
    assert trained_as("bf16-true") != trained_as("bf16"), "a true precision is not the mixed one's short name"


@pytest.mark.parametrize("option", ["wandb", "csv"])
def test_logger_configs_instantiate(option, tmp_path):
    cfg = compose_config([f"logger={option}", f"paths.logs={tmp_path}", "category=Pa"])
    logger = instantiate(cfg.logger)
    assert type(logger).__name__ == {"wandb": "WandbLogger", "csv": "CSVLogger"}[option]


def test_the_wandb_logger_starts_its_run_without_the_setting_wandb_warns_is_obsolete(tmp_path, monkeypatch):
    import wandb

    logger = instantiate(compose_config(["logger=wandb", f"paths.logs={tmp_path}", "category=Pa", "stage=ti"]).logger)
    monkeypatch.setattr(wandb, "run", None)
    with mock.patch.object(wandb, "init") as init:
        logger.experiment
    settings = init.call_args.kwargs
    assert "anonymous" not in settings, "wandb prints 'The anonymous setting has no effect' at every run given it"
    assert (settings["project"], settings["name"], settings["mode"]) == ("stablesdg", "synthetic-Pa-default-ti", "offline")


def test_wandb_is_offline_unless_asked(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_config(["logger=wandb", "category=Pa", "stage=inspect"])
    assert cfg.logger.mode == "offline"
    assert cfg.logger.group == "synthetic/Pa/inspect"
    assert compose_config(["logger=wandb", "logger.mode=online"]).logger.mode == "online"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert compose_config(["logger=wandb"]).logger.mode == "online"


def test_logger_none_has_no_target():
    from stablesdg.loggers import build_logger

    assert build_logger(compose_config(["logger=none"])) is None


EXPERIMENTS = sorted(p.stem for p in (REPO / "experiments").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (SWEEP_DIR / "sweep").glob("*.yaml"))


def test_experiments_and_sweeps_exist():
    assert EXPERIMENTS and SWEEPS
    assert (CONFIG_DIR / "experiment").resolve() == (REPO / "experiments").resolve()


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name, tmp_path):
    cfg = compose_config([f"+experiment={name}", f"paths.artifacts={tmp_path}"])
    OmegaConf.resolve(cfg)
    instantiate(cfg.dataset)


def _sweep_jobs(name: str) -> list[list[str]]:
    """The override list of every job of an experiment's own multirun (its hydra.sweeper.params)."""
    import itertools

    cfg = compose_config([f"+experiment={name}"], return_hydra=True)
    params = cfg.hydra.sweeper.params or {}
    choices = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]
    return [list(job) for job in itertools.product(*choices)]


def _check_pipeline_steps(cfg: DictConfig, overrides: list[str]) -> None:
    """What ``stage=pipeline`` checks before its first step: its own settings, then every kind of step composed from
    ``overrides`` (the command's) and checked by its stage (the classifier steps where the command runs every
    category)."""
    check_pipeline_settings(cfg)
    categories, complete = pipeline_categories(cfg)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        check_steps(Runner(overrides), cfg, categories[0], complete and "classify" in cfg.pipeline.steps)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_job_of_an_experiment_composes_and_states_only_differences(name, tmp_path):
    from stablesdg.train import plan

    folders = []
    for index, job in enumerate(_sweep_jobs(name)):
        overrides = [f"+experiment={name}", f"paths.artifacts={tmp_path}", *job]
        cfg = compose_config(overrides)
        OmegaConf.resolve(cfg)
        folders.append(plan(cfg)[0])
        assert folders.count(folders[-1]) == 1, f"job {job} writes the folder of an earlier job: {folders[-1]}"
        if cfg.stage.name != "pipeline":
            continue
        if index == 0:  # composing every step of every job would take minutes; the methods' steps are checked below
            _check_pipeline_steps(cfg, [o for o in overrides if not o.startswith(("stage", "category"))])
        else:
            check_pipeline_settings(cfg)
    text = (REPO / "experiments" / f"{name}.yaml").read_text()
    assert "_target_" not in text and "max_steps: 1000" not in text, "experiments restate no defaults"


@pytest.mark.parametrize("method", sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml")))
def test_every_method_gives_pipeline_settings_the_pipeline_accepts(method, tmp_path):
    # one category: no method sets pipeline.classify, whose steps the experiments' check covers; stylegan3 imports
    # a folder only its user can name (without it, tests/test_pipeline.py shows the pipeline refuse the method)
    given = [f'pipeline.generation=["stage.source={tmp_path}"]'] if method == "stylegan3" else []
    overrides = [f"method={method}", *given]
    cfg = compose_config(["stage=pipeline", "category=Cr", *overrides])
    _check_pipeline_steps(cfg, overrides)
    users = {name: list(cfg.pipeline[name]) for name in METHOD_LISTS}
    assert users == {name: [] for name in METHOD_LISTS} | ({"generation": given[0].split("=", 1)[1][2:-2].split('","')}
                                                           if given else {}), \
        "a method's settings are in pipeline.method_overrides, so the lists a user sets do not replace them"


@pytest.mark.parametrize(("method", "users", "step", "expected"), [
    ("prompt_defect", 'pipeline.adaptation=["stage.max_steps=3"]', "ti", {"placeholder": "defect", "max_steps": 3}),
    ("prompt_patches", 'pipeline.ti=["stage.max_steps=3"]', "ti", {"placeholder": "patches", "max_steps": 3}),
    ("lora_only", 'pipeline.lora=["stage.max_steps=3"]', "lora", {"use_ti": False, "max_steps": 3}),
    ("lora_only", 'pipeline.lora=["stage.use_ti=true"]', "lora", {"use_ti": True}),
    ("dreambooth", 'pipeline.full=["stage.max_steps=3"]', "full", {"use_ti": False, "prior_images": "auto", "max_steps": 3}),
    ("ti_only", 'pipeline.generation=["stage.num_inference_steps=3"]', "generate",
     {"adapter": "ti", "init": "noise", "num_inference_steps": 3}),
    ("stablesdg", 'pipeline.sweep.overrides=["stage.num_inference_steps=3"]', "sweep",
     {"num_images": 200, "num_inference_steps": 3, "strength": 0.3}),
    ("+experiment=fig6_lora_rank pipeline.rank=4", 'pipeline.lora=["stage.max_steps=3"]', "lora",
     {"rank": 4, "max_steps": 3}),
    ("ddim", 'pipeline.generation=["stage.batch_size=3"]', "sample", {"generator": "ddim", "num_inference_steps": 50,
                                                                      "batch_size": 3}),
])
def test_a_users_override_list_adds_to_the_methods_and_wins_where_both_set_a_key(method, users, step, expected):
    from stablesdg.pipeline_steps import adapt_overrides, generate_overrides, sweep_overrides

    chosen = method.split() if method.startswith("+") else [f"method={method}"]
    cfg = compose_config(["stage=pipeline", *chosen, users])
    overrides = (adapt_overrides(cfg.pipeline, step, "Pa") if step in ADAPTATIONS
                 else sweep_overrides(cfg.pipeline, "Pa", 0.3, 3) if step == "sweep"
                 else generate_overrides(cfg.pipeline, "Pa", []))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        composed = Runner([*chosen, users]).compose(overrides).stage
    assert composed.name == {"sweep": "generate"}.get(step, step) and {key: composed[key] for key in expected} == expected


def test_a_pipeline_composes_each_step_once_and_hands_each_caller_a_config_of_its_own(monkeypatch):
    # the checks before the first step, the plan and the run each ask for a step's config: Hydra composes it once
    import hydra

    from stablesdg.pipeline_steps import adapt_overrides

    composed = []
    real = hydra.compose
    monkeypatch.setattr(hydra, "compose", lambda **kw: composed.append(kw["overrides"]) or real(**kw))
    pipe = compose_config(["stage=pipeline"]).pipeline
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        runner = Runner(["stage=pipeline", "model=tiny"])
        first = runner.compose(adapt_overrides(pipe, "ti", "Pa"))
        first.stage.max_steps = 7
        again = runner.compose(adapt_overrides(pipe, "ti", "Pa"))
        lora = runner.compose(adapt_overrides(pipe, "lora", "Pa"))
    steps = [o for o in composed if any(word.startswith("category=") for word in o)]
    assert len(steps) == 2, "ti once, lora once"
    assert again.stage.max_steps == compose_config(["stage=ti"]).stage.max_steps != 7
    assert (again.stage.name, lora.stage.name) == ("ti", "lora")


def test_table_experiments_run_the_methods_and_variants_the_report_reads():
    from stablesdg.tables import paper_tables

    variants = {}
    for name in ("table2_ablation", "table3_prompts", "fig6_lora_rank"):
        for job in _sweep_jobs(name):
            cfg = compose_config([f"+experiment={name}", *job])
            variants[cfg.variant] = (cfg.dataset.name, cfg.category)
    specs = paper_tables()
    for key in ("table2_ablation", "table3_prompts", "fig6_lora_rank"):
        for row in specs[key]["rows"].values():
            assert variants.get(row["variant"]) == ("neu", "Pa"), f"{key}: no job makes variant {row['variant']}"
    table2 = compose_config(["+experiment=table2_ablation", "method=ti_only"])
    assert (table2.variant, list(table2.pipeline.adapt), list(table2.pipeline.method_overrides.generation)) == \
        ("ti_only", ["ti"], ["stage.adapter=ti", "stage.init=noise"])
    assert compose_config(["+experiment=table7_fid_ccbsd"]).dataset.name == "ccbsd"
    fig9 = compose_config(["+experiment=fig9_substitution"])
    assert [c[1] for c in fig9.pipeline.classify.compositions] == ["stage.mode=none", "stage.mode=substitute"] * 3


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_composes_with_its_sweep_params_and_each_point_has_its_own_folder(name):
    from stablesdg.train import plan

    cfg = compose_config([f"+sweep={name}"], with_sweeps=True, return_hydra=True)
    params = cfg.hydra.sweeper.params
    assert params, f"sweep {name} sweeps nothing"
    # two values of each swept key (a grid's first two, an interval's ends) must give two folders
    for key, values in params.items():
        two = re.sub(r"^\w+\((.*)\)$", r"\1", str(values)).split(",")[:2]  # choice(a,b) / interval(a, b) / a,b
        assert len(two) == 2, (key, values)
        folders = {plan(compose_config([f"+sweep={name}", "dataset=neu", "category=Pa", f"{key}={value.strip()}"],
                                       with_sweeps=True))[0] for value in two}
        assert len(folders) == 2, f"sweep {name}: {key}={two[0]} and {key}={two[1]} write one folder"


def test_seeds_sweep_gives_each_seed_its_own_variant():
    cfg = compose_config(["+sweep=seeds", "seed=2"], with_sweeps=True)
    assert cfg.variant == "seed2"


def test_top_level_keys_are_typed():
    from hydra.errors import ConfigCompositionException

    assert compose_config(["seed=7"]).seed == 7
    with pytest.raises(ConfigCompositionException, match="seed=abc"):
        compose_config(["seed=abc"])


def test_a_top_level_setting_given_what_it_cannot_be_is_one_line_in_every_job_and_what_hydra_converts_passes():
    from stablesdg.errors import UserError
    from stablesdg.schema import check_overrides, require_top_level_types

    for words, refusal in ((["seed=abc"], "seed=abc: seed must be an integer from 0 to 4294967295, got abc"),
                           (["stage=ti", "seed=0,1.5"],
                            "seed=0,1.5: seed must be an integer from 0 to 4294967295, got 1.5"),
                           (["seed=null"], "seed=null: seed must be an integer from 0 to 4294967295, got null"),
                           (["seed="], "seed=: seed must be an integer from 0 to 4294967295, got nothing"),
                           (["category=[Pa,Cr]"], "category=[Pa,Cr]: category names one class; for several, run "
                            "stage=pipeline 'pipeline.categories=[Pa,Cr]', or one job each: -m 'category=Pa,Cr'"),
                           (["variant=null"], "variant=null: variant names one set of artifacts, a folder name "
                            "(default: default)"),
                           (["skip_up_to_date=maybe"], "skip_up_to_date=maybe: skip_up_to_date is a switch, set it to "
                            "true or false")):
        with pytest.raises(UserError) as refused:
            require_top_level_types(words)
        assert str(refused.value) == refusal
        if not any("," in word for word in words):  # a job's own overrides hold no sweep
            with pytest.raises(UserError, match=re.escape(refusal)):
                check_overrides(words, compose_config)
            with pytest.raises(Exception, match="Error merging override"):  # what Hydra would have said
                compose_config(words)
    accepted = ["seed='3'", "seed=range(0,3)", "seed=${oc.env:SEED,4}", "category='a','b'", "category=1",
                "variant=7", "~seed"]
    require_top_level_types(accepted)
    with pytest.raises(UserError, match="^skip_up_to_date=no: skip_up_to_date is a switch, set it to true or false$"):
        require_top_level_types(["skip_up_to_date=no"])  # which Hydra would take for false, and a typo of it for text
    composed = compose_config(["seed='3'", "category=1", "variant=7"])
    assert (composed.seed, composed.category, composed.variant) == (3, "1", "7")


def test_an_override_hydra_cannot_read_is_one_line_and_an_unquoted_list_of_overrides_gets_the_word_that_reads_it():
    from stablesdg.errors import UserError
    from stablesdg.schema import require_parsable

    with pytest.raises(UserError) as unquoted:
        require_parsable(["stage=pipeline", "pipeline.sweep.overrides=[stage.batch_size=4,stage.scheduler=euler]"])
    suggested = re.fullmatch(r"pipeline.sweep.overrides=\[.*\]: each override in a list is quoted, and the whole "
                             r"word too, for the shell: '(.*)'", str(unquoted.value))[1]
    require_parsable([suggested])
    assert list(compose_config(["stage=pipeline", suggested]).pipeline.sweep.overrides) == [
        "stage.batch_size=4", "stage.scheduler=euler"]
    with pytest.raises(UserError, match=r"^seed==3: Hydra cannot read this override \(extraneous input '=' expecting "
                                        r"[^\n]*\); see https://hydra.cc/docs/advanced/override_grammar/basic/$"):
        require_parsable(["seed==3"])
    with pytest.raises(UserError) as non_ascii:  # a class folder's name, here in a sweep over two categories
        require_parsable(["category=划痕,dent"])
    assert str(non_ascii.value) == ("category=划痕,dent: Hydra reads a value with non-ASCII characters only in quotes; "
                                    "quote it, and the whole word too, for the shell: 'category=\"划痕\",\"dent\"'")
    sweep = OverridesParser.create().parse_overrides(['category="划痕","dent"'])[0]
    assert [value.text for value in sweep.value().list] == ["划痕", "dent"]
    assert compose_config(['category="划痕"']).category == "划痕"
    require_parsable(["category=Cr,Pa", "pipeline.ti=[]", "stage.prompt='a photo of {}'", "~stage.flip",
                      "category='划痕'"])
    with pytest.raises(UserError) as braces:  # stage.prompt="A photo of {}, rusty", as the shell passes it on
        require_parsable(["stage.prompt=A photo of {}, rusty"])
    suggested = re.fullmatch(r"stage.prompt=A photo of \{\}, rusty: Hydra reads this value as text only in quotes; "
                             r"quote it, and the whole word too, for the shell: (.*)", str(braces.value))[1]
    (word,) = shlex.split(suggested)  # what the shell passes on when the suggestion is typed
    assert compose_config(["stage=ti", word]).stage.prompt == "A photo of {}, rusty"
    with pytest.raises(UserError, match=r"^stage.prompt=\[a,b: Hydra cannot read this override \("):
        require_parsable(["stage.prompt=[a,b"])  # a list begun, not text: no quotes suggested
    with pytest.raises(UserError) as tilde:  # paths.artifacts=~/store: no shell expands a ~ there
        require_parsable(["paths.artifacts=~/my store"])
    suggested = re.fullmatch(r"paths.artifacts=~/my store: the shell expands a ~ only at the start of a word, and "
                             r"Hydra cannot read it here; write (.*)", str(tilde.value))[1]
    assert suggested == '"paths.artifacts=$HOME/my store"'
    (word,) = shlex.split(suggested.replace("$HOME", "/home/me"))  # as the shell passes it on, $HOME expanded
    assert compose_config([word]).paths.artifacts == "/home/me/my store"


def test_a_folder_setting_from_home_is_under_home_not_in_a_folder_named_tilde(tmp_path, monkeypatch):
    from stablesdg.schema import expand_home

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = compose_config(['paths.artifacts="~/store"', 'paths.logs="~/logs"', "dataset=folder", 'dataset.root="~/data"',
                          "dataset.name=mine", "logger=csv"], return_hydra=True)
    assert cfg.hydra.run.dir.startswith(f"{tmp_path}/logs/runs/"), "Hydra's run folder, made before the job starts"
    assert cfg.hydra.sweep.dir.startswith(f"{tmp_path}/logs/multiruns/")
    expand_home(cfg)
    assert (cfg.paths.artifacts, cfg.paths.logs, cfg.dataset.root) == (f"{tmp_path}/store", f"{tmp_path}/logs",
                                                                       f"{tmp_path}/data")
    assert (cfg.logger.save_dir, cfg.dataset.split_dir) == (f"{tmp_path}/logs/csv", f"{tmp_path}/store/mine/splits")
    for stage, key in (("full", "stage.prior_images"), ("external", "stage.source"), ("export", "stage.out"),
                       ("classify", "classifier.weights"), ("generate", "stage.tuned"), ("ti", "model.path")):
        named = compose_config([f"stage={stage}", *(["model=sd15"] if key == "model.path" else []), f'{key}="~/x y"'])
        expand_home(named)
        assert OmegaConf.select(named, key) == f"{tmp_path}/x y", key
    untouched = compose_config(["paths.artifacts=store", "paths.logs=/var/logs"])
    expand_home(untouched)
    assert (untouched.paths.artifacts, untouched.paths.logs) == ("store", "/var/logs")


@pytest.mark.parametrize("name", ["Pa", "rolled-in scale", "划痕", "0", "null", "true", "[a]", 'say "x"'])
def test_a_class_name_becomes_an_override_that_hydra_reads_back_as_that_name(name):
    from stablesdg.commands import override_word, shell_word
    from stablesdg.pipeline_steps import fid_overrides

    word = override_word("category", name)
    assert OverridesParser.create().parse_overrides([word])[0].value() == name
    assert (word == f"category={name}") == (name in ("Pa", "rolled-in scale"))  # quoted only where it must be
    assert shlex.split(shell_word("category", name)) == [word], "a message's word, pasted into a shell, is that word"
    assert (shell_word("category", name) == word) == (name == "Pa")
    assert compose_config(fid_overrides(compose_config(["stage=pipeline"]).pipeline, name)).category == name


@pytest.mark.parametrize("overrides, refusal", [
    (["stage=inspect", "~seed"], "~seed: the run reads seed, which cannot be deleted; set it instead: seed=<value>"),
    (["stage=ti", "category=Pa", "~category"], "~category: the run reads category, which cannot be deleted; set it "
     "instead: category=<value>"),
    (["stage=inspect", "~stage.grid_per_class"], "~stage.grid_per_class: the run reads stage.grid_per_class, which "
     "cannot be deleted; set it instead: stage.grid_per_class=<value>"),
    (["~paths.artifacts"], "~paths.artifacts: the run reads paths.artifacts, which cannot be deleted; set it instead: "
     "paths.artifacts=<value>"),
    (["dataset=neu", "~dataset.classes"], "~dataset.classes: the run reads dataset.classes, which cannot be deleted; "
     "to give the map whole, add it back: '~dataset.classes' '+dataset.classes={Cr: crazing, Pa: patches}'"),
    # a key the config lacks: Hydra's two lines before, with no word of the key meant
    (["stage=generate", "~stage.strenght"], "~stage.strenght: stage=generate has no setting stage.strenght (did you "
     "mean stage.strength?)"),
    (["stage=classify", "~stage.flip"], "~stage.flip: stage=classify has no setting stage.flip (stage=dcgan, "
     "stage=ddpm, stage=full, stage=lora and stage=ti have it)"),
    (["~sed"], "~sed: the config has no sed to delete (did you mean ~seed?)"),
    (["dataset=neu", "~dataset.classes.Xx"], "~dataset.classes.Xx: the config has no dataset.classes.Xx to delete"),
    (["~trainer.max_epochs"], "~trainer.max_epochs: the trainer config does not set trainer.max_epochs, so the "
     "library's default applies already; leave out ~trainer.max_epochs"),
    # a config group the run reads: a stack trace before
    (["stage=ti", "category=Pa", "~model"], "~model: the run reads model, a config group, which cannot be deleted; "
     "choose one instead: model=<sd15, sd15_random, tiny>"),
    (["~stage"], "~stage: the run reads stage, a config group, which cannot be deleted; choose one instead: "
     "stage=<classify, dcgan, ddpm, export, external, fid, full, generate, inspect, lora, pipeline, sample, ti>"),
    (["stage=pipeline", "~classifier"], "~classifier: the run reads classifier, a config group, which cannot be "
     "deleted; choose one instead: classifier=<alexnet, densenet, resnet, squeezenet, vgg>"),
    # left to Hydra: a group read as absent (no logger) or whose settings have defaults elsewhere (the pipeline's
    # without a method's), a library's argument (its default applies), a map given whole, a map's entry
    (["~logger"], None),
    (["stage=pipeline", "~method"], None),
    (["trainer=ddp", "~trainer.strategy"], None),
    (["dataset=neu", "~dataset.classes", "+dataset.classes={Pa: patches}"], None),
    (["dataset=neu", "~dataset.classes.Cr"], None),
])
def test_a_setting_the_run_reads_is_refused_deleted(overrides, refusal):
    from stablesdg.errors import UserError
    from stablesdg.schema import check_overrides

    if refusal is None:
        check_overrides(overrides, compose_config, _config_groups())
        return
    with pytest.raises(UserError) as refused:
        check_overrides(overrides, compose_config, _config_groups())
    assert str(refused.value) == refusal


def test_a_switch_given_anything_but_true_or_false_is_refused():
    from stablesdg.errors import UserError
    from stablesdg.schema import check_overrides

    composed = []

    def compose(overrides):
        composed.append(overrides)
        return compose_config(overrides)

    for value in ("no", "off", "0", "maybe"):
        with pytest.raises(UserError, match=rf"^stage.preload={value}: stage.preload is a switch, set it to true or false$"):
            check_overrides(["stage=classify", "dataset=neu", f"stage.preload={value}"], compose)
    assert composed[-1] == ["stage=classify", "dataset=neu"], "the defaults of the same groups, no dotted override"
    with pytest.raises(UserError, match="model.channels_last is a switch"):
        check_overrides(["stage=generate", "stage.strength=0.5", "model.channels_last=yes"], compose)
    composed.clear()
    check_overrides(["stage=classify", "stage.preload=false", "stage.resume=True", "seed=3"], compose)
    check_overrides(["stage=classify", "stage.alpha=0.4", "stage.generated=/data/gen", "~trainer.log_every_n_steps"],
                    compose)
    assert composed == [["stage=classify", "seed=3"], ["stage=classify"]], "each check composes the top level once"


def test_a_number_given_a_word_is_refused_and_words_that_a_key_takes_pass():
    from stablesdg.errors import UserError
    from stablesdg.schema import check_overrides

    for stage, override, key in (("ti", "stage.lr=abc", "stage.lr"), ("ti", "stage.max_steps=many", "stage.max_steps"),
                                 ("ti", "model.resolution=big", "model.resolution"),
                                 # numbers whose default is null ("not set")
                                 ("ti", "stage.alpha=half", "stage.alpha"),
                                 ("generate", "stage.guidance_scale=abc", "stage.guidance_scale"),
                                 ("fid", "stage.max_images=all", "stage.max_images"),
                                 ("classify", "classifier.depth=deep", "classifier.depth")):
        with pytest.raises(UserError, match=rf"^{override}: {key} is a number, got '{override.split('=')[1]}'$"):
            check_overrides([f"stage={stage}", override], compose_config)
    check_overrides(["stage=generate", "stage.strength=0.5", "stage.guidance_scale=null", "stage.alpha=0.4",
                          "stage.tuned=/tmp/tuned.yaml", "stage.prompt=a photo"], compose_config)
    check_overrides(["stage=ti", "stage.lr=1e-3", "stage.max_steps=5", "stage.lr=${stage.max_steps}",
                          "trainer.devices=auto", "stage.max_steps=1,2", "model.resolution=null"], compose_config)
    # model.compile is a switch that also takes a torch.compile mode by name
    check_overrides(["stage=ti", "model.compile=reduce-overhead"], compose_config)
    with pytest.raises(UserError, match="model.compile is a switch"):
        check_overrides(["stage=ti", "model.compile=1"], compose_config)


def test_slurm_launcher_composes_for_multiruns():
    cfg = compose_config(["hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=1"], return_hydra=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def test_an_optuna_sweep_logs_optunas_lines_through_hydras_handlers_without_colour_codes(caplog):
    import optuna

    cfg = compose_config(["+sweep=strength_guidance_optuna", "category=Pa"], with_sweeps=True, return_hydra=True)
    library = logging.getLogger("optuna")
    try:
        instantiate(cfg.hydra.callbacks.optuna_log_lines).on_multirun_start(cfg)
        assert not library.handlers, "Optuna's own handler colours its lines with terminal codes"
        with caplog.at_level(logging.INFO):
            optuna.logging.get_logger("optuna.study.study").info("A new study created in memory")
        assert [r.getMessage() for r in caplog.records if r.name == "optuna.study.study"] == ["A new study created in memory"]
    finally:
        optuna.logging.enable_default_handler()
        optuna.logging.disable_propagation()


def test_adaptation_defaults_follow_the_paper():
    ti = compose_config(["stage=ti"]).stage
    assert (ti.lr, ti.batch_size, ti.max_steps, ti.placeholder, ti.prompt) == (5e-4, 4, 1000, "<unknown>", "A photo of {}")
    lora = compose_config(["stage=lora"]).stage
    assert (lora.lr, lora.batch_size, lora.max_steps, lora.rank, lora.use_ti) == (1e-4, 4, 1000, 1, True)
    assert compose_config(["model=sd15"]).model.resolution == 512


@pytest.mark.parametrize("overrides, refusal", [
    # the key Hydra's own error suggests for a misspelt stage.max_steps: the run would train the default 30,000 steps
    (["stage=ddpm", "+stage.max_step=2"],
     "+stage.max_step=2: stage=ddpm has no setting stage.max_step, so nothing would read it (did you mean stage.max_steps?)"),
    (["stage=classify", "+classifier.dept=34"],
     "+classifier.dept=34: classifier=squeezenet has no setting classifier.dept, so nothing would read it "
     "(did you mean classifier.depth?)"),
    (["++paths.artifact=/x"],
     "++paths.artifact=/x: paths has no setting paths.artifact, so nothing would read it (did you mean paths.artifacts?)"),
    (["stage=ti", "+stage.warmup=1"],
     "+stage.warmup=1: stage=ti has no setting stage.warmup, so nothing would read it "
     "(list them with: python -m stablesdg.train stage=ti --cfg job --package stage)"),
    # no sibling spelt alike: the setting of that name elsewhere, or the options of the group that have it
    (["stage=ti", "+stage.optim.lr=1"],
     "+stage.optim.lr=1: stage=ti has no setting stage.optim.lr, so nothing would read it (did you mean stage.lr?)"),
    (["stage=generate", "generation.strength=0.4"], "generation.strength=0.4: generation has no setting "
     "generation.strength (did you mean stage.strength or generation.fallback.strength or pipeline.sweep.strength?)"),
    (["stage=ti", "stage.steps=100"], "stage.steps=100: stage=ti has no setting stage.steps (did you mean stage.max_steps "
     "or stage.validation_steps?)"),  # not pipeline.steps, the pipeline's list of steps
    (["stage=ti", "stage.rank=4"], "stage.rank=4: stage=ti has no setting stage.rank (stage=lora has it)"),
    (["stage=classify", "dataset.batch_size=64"], "dataset.batch_size=64: dataset=synthetic has no setting "
     "dataset.batch_size (did you mean stage.batch_size?)"),  # the classifier's batch: no stage reads a dataset's
    (["stage=ti", "stage.strength=0.4"], "stage.strength=0.4: stage=ti has no setting stage.strength (stage=generate has it)"),
    (["stage=ti", "stage.inception_weights=/w.pth"], "stage.inception_weights=/w.pth: stage=ti has no setting "
     "stage.inception_weights (stage=fid and stage=generate have it)"),  # null there: a key all the same
    (["stage=generate", "stage.max_steps=10"], "stage.max_steps=10: stage=generate has no setting stage.max_steps "
     "(stage=dcgan, stage=ddpm, stage=full, stage=lora and stage=ti have it)"),
    (["stage=ti", "+stage.lr.warmup=1"], "+stage.lr.warmup=1: stage.lr is a single value, not a group of settings"),
    # keys of the user's own, or of a null map, set without +: Hydra's own refusal takes six lines
    (["dataset=neu", "generation.categories.Pa.strength=0.4"], "generation.categories.Pa.strength=0.4: "
     "generation.categories holds keys of your own, added with +: +generation.categories.Pa.strength=0.4"),
    (["dataset=neu", "dataset.classes.Ox=oxide_scale"], "dataset.classes.Ox=oxide_scale: dataset.classes holds keys of "
     "your own, added with +: +dataset.classes.Ox=oxide_scale"),
    (["dataset=neu", "dataset.synthetic.per_class=10"], "dataset.synthetic.per_class=10: dataset.synthetic is null; "
     "Hydra adds keys to it only with +: +dataset.synthetic.per_class=10"),
    # a map of the user's own given whole, without +: Hydra merges it into the config's, refusing keys that one lacks
    # in six lines, and keeping the keys it leaves out without a word
    (["dataset=neu", "dataset.classes={Cr: crazing, Pa: patches}"], "dataset.classes={Cr: crazing, Pa: patches}: "
     "Hydra merges this map into the config's dataset.classes, which holds Cr, In, Pa, PS, RS, Sc, so it keeps In, PS, "
     "RS, Sc as they are; to give the map whole: '~dataset.classes' '+dataset.classes={Cr: crazing, Pa: patches}', or "
     "change only its entries: dataset.classes.Cr=crazing dataset.classes.Pa=patches"),
    (["dataset=neu", "dataset.classes={Ox: oxide_scale}"], "dataset.classes={Ox: oxide_scale}: Hydra merges this map "
     "into the config's dataset.classes, which holds Cr, In, Pa, PS, RS, Sc, so it refuses the keys it lacks (Ox); to "
     "give the map whole: '~dataset.classes' '+dataset.classes={Ox: oxide_scale}'"),
    (["dataset=neu", "dataset.classes=[crazing,patches]"], "dataset.classes=[crazing,patches]: dataset.classes is a "
     "map, e.g. 'dataset.classes={Cr: crazing, Pa: patches}'"),
    (["dataset=neu", "generation.categories={Pa: {strength: 0.4}}"], "generation.categories={Pa: {strength: 0.4}}: "
     "Hydra merges this map into the config's generation.categories, which is empty, so it refuses the keys it lacks "
     "(Pa); to add or change entries, keeping the others: '+generation.categories={Pa: {strength: 0.4}}'"),
    (["+sed=3"], "+sed=3: there is no setting or config group sed (did you mean seed?)"),
    (["stage=tl"], "stage=tl: there is no stage 'tl'; choose from classify, dcgan, ddpm, export, external, fid, full, generate, "
     "inspect, lora, pipeline, sample, ti"),
    (["+experiment=table_4_grid"], "+experiment=table_4_grid: there is no experiment 'table_4_grid'; choose from "
     "fig6_lora_rank, fig9_substitution, neu_setup, quickstart, table2_ablation, table3_prompts, table4_grid, "
     "table5_fid, table6_accuracy, table7_fid_ccbsd, table8_accuracy_ccbsd (did you mean +experiment=table4_grid?)"),
    (["stage=inspect", "+stage.build_modle=false"],  # true or false passes any kind check, not this one
     "+stage.build_modle=false: stage=inspect has no setting stage.build_modle, so nothing would read it "
     "(did you mean stage.build_model?)"),
    # a trainer or logger key the config lacks: set without +, Hydra's own refusal takes seven lines
    (["stage=ti", "trainer.gradient_clip_val=1"], "trainer.gradient_clip_val=1: the trainer config does not set "
     "trainer.gradient_clip_val; to pass lightning.Trainer that argument, add it: +trainer.gradient_clip_val=1"),
    (["stage=ti", "trainer.gradient_clip_vall=1"],
     "trainer.gradient_clip_vall=1: lightning.Trainer takes no argument gradient_clip_vall "
     "(did you mean trainer.gradient_clip_val?)"),
    (["stage=classify", "trainer.max_epochs=3"], "trainer.max_epochs is set by each stage from its own settings, so "
     "trainer.max_epochs=3 would do nothing: drop it; set stage.max_epochs (classify) or stage.max_steps (ti, lora, "
     "full, dcgan, ddpm)"),
    (["logger=csv", "logger.flush_logs_every_n_steps=5"], "logger.flush_logs_every_n_steps=5: the logger config does "
     "not set logger.flush_logs_every_n_steps; to pass lightning.pytorch.loggers.CSVLogger that argument, add it: "
     "+logger.flush_logs_every_n_steps=5"),
])
def test_a_key_nothing_would_read_or_hydra_would_refuse_is_refused_with_what_was_meant(overrides, refusal):
    from stablesdg.errors import UserError
    from stablesdg.schema import check_overrides

    with pytest.raises(UserError) as refused:
        check_overrides(overrides, compose_config, _config_groups())
    assert str(refused.value) == refusal


@pytest.mark.parametrize("overrides, added, key, value", [
    (["stage=ti", "+seed=3"], "+seed=3", "seed", 3),
    (["+variant=v2", "stage=ti"], "+variant=v2", "variant", "v2"),
    (["+model=tiny"], "+model=tiny", "model.name", "tiny"),  # a group of the defaults list: "appears more than once"
    (["+stage=ti", "category=Pa"], "+stage=ti", "stage.name", "ti"),  # "Multiple values for stage"
    (["+method=ddpm"], "+method=ddpm", "variant", "ddpm"),  # a _global_ group: no node of its name in the config
    (["stage=ti", "+paths.artifacts=/store"], "+paths.artifacts=/store", "paths.artifacts", "/store"),
    (["stage=ti", "+trainer.accelerator=cpu"], "+trainer.accelerator=cpu", "trainer.accelerator", "cpu"),
    (["dataset=neu", "+dataset.classes.Cr=cracks"], "+dataset.classes.Cr=cracks", "dataset.classes.Cr", "cracks"),
])
def test_a_plus_that_adds_what_the_config_has_is_one_line_with_the_word_without_it(overrides, added, key, value):
    from hydra.errors import ConfigCompositionException

    from stablesdg.errors import UserError
    from stablesdg.schema import check_overrides, composing_once

    with pytest.raises(ConfigCompositionException):
        compose_config(overrides)  # Hydra's own refusal, in three to five lines
    with pytest.raises(UserError) as refused:
        check_overrides(overrides, compose_config, _config_groups())
    written = added.split("=", 1)[0][1:]
    assert str(refused.value) == (f"{added}: the config has {written} already, and + adds only what it lacks: "
                                  f"write {added[1:]}")
    fixed = [word[1:] if word == added else word for word in overrides]
    check_overrides(fixed, compose_config, _config_groups())
    assert OmegaConf.select(compose_config(fixed), key) == value
    shared = composing_once(compose_config)
    check_overrides([word for word in overrides if word != added], shared)
    with pytest.raises(UserError):  # composed first without the + word: not the same shape of config
        check_overrides(overrides, shared)


@pytest.mark.parametrize("overrides, forced, written, key, value", [
    (["stage=ti", "++model=sd15_random"], "++model=sd15_random", "model=sd15_random", "model.name", "sd15_random"),
    (["++method=ddpm", "stage=pipeline"], "++method=ddpm", "method=ddpm", "variant", "ddpm"),
    # no experiment is chosen by default
    (["++experiment=quickstart"], "++experiment=quickstart", "+experiment=quickstart", "stage.name", "pipeline"),
])
def test_a_config_group_given_with_two_pluses_is_one_line_with_the_word_that_chooses_it(overrides, forced, written,
                                                                                         key, value):
    from hydra.errors import ConfigCompositionException

    from stablesdg.errors import UserError
    from stablesdg.schema import check_overrides

    with pytest.raises(ConfigCompositionException, match="force-add of config groups is not supported"):
        compose_config(overrides)
    with pytest.raises(UserError) as refused:
        check_overrides(overrides, compose_config, _config_groups())
    assert str(refused.value) == f"{forced}: ++ sets or adds a setting, not a config group: write {written}"
    fixed = [written if word == forced else word for word in overrides]
    check_overrides(fixed, compose_config, _config_groups())
    assert OmegaConf.select(compose_config(fixed), key) == value


def test_a_plus_that_adds_a_key_the_config_lacks_or_holds_null_passes():
    from stablesdg.schema import check_overrides

    for overrides in (["stage=ti", "+category=Pa"], ["stage=generate", "+stage.strength=0.5"], ["++seed=3", "++variant=v2"],
                      ["stage=ti", "+trainer.gradient_clip_val=1"], ["dataset=neu", "+dataset.classes={Ox: oxide}"]):
        check_overrides(overrides, compose_config, _config_groups())
        compose_config(overrides)  # and Hydra composes them


@pytest.mark.parametrize("overrides, classes", [
    (["~dataset.classes", "+dataset.classes={Cr: crazing, Pa: patches}"], {"Cr": "crazing", "Pa": "patches"}),
    (["dataset.classes={Cr: a, In: b, Pa: c, PS: d, RS: e, Sc: f}"],  # every entry given: the merge replaces each
     {"Cr": "a", "In": "b", "Pa": "c", "PS": "d", "RS": "e", "Sc": "f"}),
    (["dataset.classes.Cr=crack"], {"Cr": "crack", "In": "inclusion", "Pa": "patches", "PS": "pitted_surface",
                                    "RS": "rolled-in_scale", "Sc": "scratches"}),
])
def test_the_ways_to_set_a_datasets_classes_that_the_refusal_gives_compose_to_what_they_say(overrides, classes):
    from stablesdg.schema import check_overrides

    check_overrides(["dataset=neu", *overrides], compose_config, _config_groups())
    assert OmegaConf.to_container(compose_config(["dataset=neu", *overrides]).dataset.classes) == classes


def _config_groups() -> dict[str, list[str]]:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return config_groups()


def test_the_config_groups_are_the_folders_of_conf_with_their_options_and_the_sweeps_where_searched():
    groups = _config_groups()
    assert {group for group in groups if not group.startswith("hydra/")} == {p.name for p in CONFIG_DIR.iterdir()
                                                                             if p.is_dir()}
    # Hydra's own, with the launchers and sweepers of the plugins installed (README: More GPUs, SLURM)
    assert {"basic", "joblib", "submitit_local", "submitit_slurm"} <= set(groups["hydra/launcher"])
    assert {"basic", "optuna"} <= set(groups["hydra/sweeper"])
    assert groups["stage"] == sorted(p.stem for p in (CONFIG_DIR / "stage").glob("*.yaml"))
    with initialize_config_dir(config_dir=str(SWEEP_DIR), version_base="1.3"):  # --config-dir multirun_sweeps
        assert "seeds" in config_groups()["sweep"]


def test_keys_added_where_a_library_or_the_user_chooses_the_names_pass():
    from stablesdg.schema import check_overrides

    check_overrides(["stage=classify", "+trainer.gradient_clip_val=1", "logger=wandb", "+logger.entity=me",
                     "+logger.tags=[a,b]", "dataset=neu", "+generation.categories.Pa.strength=0.4",
                     "+generation.categories.Cr={strength:0.4,guidance_scale:5}", "+dataset.classes.Ox=oxide_scale",
                     "++stage.max_epochs=3", "+experiment=quickstart"], compose_config)
    check_overrides(["dataset=neu", "dataset.classes.Cr=cracks"], compose_config)  # one there is set without +
    check_overrides(["stage=external", "+stage.source=/data/samples"], compose_config)  # a ??? value is a setting
    check_overrides(["stage=inspect", "++stage.build_model=false"], compose_config)
    check_overrides(["stage=ti", "+experiment=quickstart", "method=ddpm", "seed=3", "category=Pa", "variant=v2",
                     "hydra/launcher=joblib"], compose_config, _config_groups())


def test_a_logger_argument_its_class_lacks_is_refused_with_the_arguments_it_takes():
    import inspect

    from lightning.pytorch.loggers import CSVLogger

    from stablesdg.errors import UserError
    from stablesdg.library_arguments import require_config_arguments
    from stablesdg.schema import check_overrides

    taken = [name for name in inspect.signature(CSVLogger.__init__).parameters if name != "self"]
    with pytest.raises(UserError) as refused:
        check_overrides(["logger=csv", "logger.flush_every=5"], compose_config, _config_groups())
    assert str(refused.value) == ("logger.flush_every=5: lightning.pytorch.loggers.CSVLogger takes no argument "
                                  f"flush_every; it takes {', '.join(taken)}")
    # added with +, the key is checked where the run builds the logger, once Lightning has loaded
    check_overrides(["logger=csv", "+logger.flush_every=5"], compose_config, _config_groups())
    with pytest.raises(UserError) as refused:
        require_config_arguments(compose_config(["logger=csv", "+logger.flush_every=5"]).logger, "logger")
    assert str(refused.value) == ("logger.flush_every: lightning.pytorch.loggers.CSVLogger takes no argument "
                                  f"flush_every; it takes {', '.join(taken)}")
    # W&B's logger hands any keyword to wandb.init; a Trainer argument added with + goes on to Lightning
    require_config_arguments(compose_config(["logger=wandb", "+logger.entity=me"]).logger, "logger")
    require_config_arguments(compose_config(["+trainer.gradient_clip_val=1"]).trainer, "trainer")


def test_an_interval_passes_where_a_searching_sweeper_draws_from_it_and_not_with_the_basic_one():
    from stablesdg.command_line import require_sweeper_for_intervals
    from stablesdg.errors import UserError

    def compose_with_hydra(overrides):
        return compose_config(overrides, return_hydra=True)

    require_sweeper_for_intervals(["hydra/sweeper=optuna", "stage=generate", "stage.strength=interval(0.3,0.7)"],
                                  compose_with_hydra)
    require_sweeper_for_intervals(["stage=generate", "stage.strength=0.3,0.5"], compose_with_hydra)
    with pytest.raises(UserError, match=r"^stage.strength=interval\(0.3,0.7\): Hydra's basic sweeper runs each value"):
        require_sweeper_for_intervals(["stage=generate", "stage.strength=interval(0.3,0.7)"], compose_with_hydra)


@pytest.mark.parametrize("overrides, refused", [
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=0"], True),
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=-1"], False),  # joblib: one job per CPU core
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"], False),
    (["hydra/sweeper=optuna", "hydra.sweeper.n_trials=-2"], True),
    (["hydra/sweeper=optuna", "hydra.sweeper.n_jobs=0"], True),
    (["hydra/sweeper=optuna", "hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1"], False),
])
def test_a_count_of_hydras_launcher_or_sweeper_that_its_library_cannot_run_is_refused(overrides, refused):
    from stablesdg.errors import UserError
    from stablesdg.schema import check_hydra_overrides

    def compose_with_hydra(words):
        return compose_config(words, return_hydra=True)

    if not refused:
        check_hydra_overrides(overrides, compose_with_hydra)
        return
    with pytest.raises(UserError, match=rf"^{re.escape(overrides[1])}: (joblib|Optuna's sweeper) runs n_"):
        check_hydra_overrides(overrides, compose_with_hydra)


def test_sweep_jobs_give_each_value_of_each_sweep_in_as_few_jobs_as_the_longest_sweep():
    from stablesdg.schema import sweep_jobs

    assert sweep_jobs(["stage=classify", "classifier=squeezenet,resnet", "seed=0,1,2", "+x=range(5,7)"]) == [
        ["stage=classify", "classifier=squeezenet", "seed=0", "+x=5"],
        ["stage=classify", "classifier=resnet", "seed=1", "+x=6"],
        ["stage=classify", "classifier=squeezenet", "seed=2", "+x=5"]]
    assert sweep_jobs(["stage=ti", "stage.lr=1e-4"]) == [["stage=ti", "stage.lr=1e-4"]]
    # Optuna's search space is the sweeper's to draw from
    assert sweep_jobs(["stage.strength=interval(0.1,0.9)", "seed=0"]) == [["seed=0"]]


def test_steps_or_jobs_that_differ_only_in_seed_category_or_variant_are_checked_against_one_composed_config():
    from stablesdg.schema import composing_once

    composed = []
    compose = composing_once(lambda overrides: composed.append(overrides) or compose_config(overrides))
    first = compose(["stage=generate", "category=Pa", "variant=sweep_s0.3_g3", "seed=0"])
    assert compose(["stage=generate", "category=Cr", "variant=sweep_s0.5_g7", "seed=2"]) is first
    assert compose(["stage=fid", "category=Pa"]).stage.name == "fid"
    assert composed == [["stage=generate", "category=Pa", "variant=sweep_s0.3_g3", "seed=0"], ["stage=fid", "category=Pa"]]
