"""The checks of a whole ``python -m stablesdg.train`` command line before Hydra composes it: which of its words are
overrides, whether it is a multirun and where its ``--config-dir`` is, and each of its jobs checked by
``stablesdg.schema`` against the config it composes."""

from __future__ import annotations

import shlex
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig, OmegaConf

from stablesdg.errors import UserError
from stablesdg.schema import (ROOT_KEYS, check_hydra_overrides, check_overrides, composing_once, config_groups,
                              require_known_category, sweep_jobs, sweeps_config_dir)

SEE_HELP = "(--help lists the options)"


# Hydra's flags of a command whose overrides compose the config they print or run (``--cfg job`` prints the job's)
COMPOSING_FLAGS = ("overrides", "multirun", "config_dir", "run", "cfg", "resolve", "package", "info")


def parse_command_line(argv: list[str]) -> tuple[list[str], bool, str | None] | None:
    """``argv``'s overrides, whether it is a multirun (``-m``, ``--multirun``) and its ``--config-dir`` (``-cd``), as
    ``hydra_arguments`` reads them; None where it has any of Hydra's flags outside ``COMPOSING_FLAGS``: another
    primary config (``--config-name``), or help (``--help``)."""
    arguments, unset = vars(hydra_arguments(argv)), vars(hydra_arguments([]))
    if any(value != unset[flag] for flag, value in arguments.items() if flag not in COMPOSING_FLAGS):
        return None
    return arguments["overrides"], arguments["multirun"], arguments["config_dir"]


def hydra_arguments(argv: list[str]) -> Namespace:
    """``argv`` as the parser of ``hydra.main`` reads it: Hydra's flags and the overrides. A one-line ``UserError``
    where Hydra would print its usage, some fifteen lines naming the program train.py, then its message: for an
    option that is none of its flags (``--badflag``), one of its flags given a value it cannot take (``--cfg
    jobs``), or ``key=value`` words on both sides of its flags (``stage=ti -m seed=3``), all but the first run of
    which Hydra would call unrecognized; and for two of its modes at once (``-m --cfg job``), a stack trace."""
    from hydra._internal.utils import get_args_parser  # the parser of hydra.main; Hydra names it nowhere public

    def refuse(message: str) -> NoReturn:
        raise UserError(f"{message} {SEE_HELP}")

    parser = get_args_parser()
    parser.error = refuse  # type: ignore[method-assign]
    arguments, unknown = parser.parse_known_args(argv)
    flag = next((word for word in unknown if word.startswith("-")), None)
    if flag is not None:
        raise UserError(f"{flag}: not an option of python -m stablesdg.train; settings are key=value words {SEE_HELP}")
    if unknown:
        apart = set(arguments.overrides) | set(unknown)
        together = [word for word in argv if word not in apart] + [word for word in argv if word in apart]
        raise UserError(f"{unknown[0]}: the key=value words of a command come together, before Hydra's flags or "
                        f"after them, not on both sides; here: python -m stablesdg.train {shlex.join(together)}")
    modes = [flag for flag, given in (("--run", arguments.run), ("--multirun", arguments.multirun),
                                      ("--cfg", arguments.cfg is not None), ("--info", arguments.info is not None),
                                      ("--shell-completion", arguments.shell_completion)) if given]
    if len(modes) > 1:  # Hydra's own refusal is a ValueError's stack trace
        raise UserError(f"{' and '.join(modes)}: a command takes one of --run, --multirun (-m), --cfg, --info and "
                        f"--shell-completion {SEE_HELP}")
    return arguments


def require_settings_not_options(argv: list[str], primary_dir: str) -> None:
    """A one-line ``UserError`` for the first word of ``argv`` written as an option whose name starts with a
    top-level setting or a config group of ``primary_dir`` (``--stage ti``, ``--seed=3``, ``-dataset.root /data``),
    with the ``key=value`` word that sets it: ``+group=option`` for a group outside the primary config's defaults
    list (``+experiment=...``). Hydra would print its usage and "unrecognized arguments". None of Hydra's own flags
    (``--cfg``, ``-m``, ``--config-dir``, ...) has such a name."""
    if not any(word.startswith("-") for word in argv):
        return
    groups = {path.name for path in Path(primary_dir).iterdir() if path.is_dir()}
    defaults = OmegaConf.to_container(OmegaConf.load(Path(primary_dir) / "config.yaml").defaults)
    in_defaults = {name for entry in defaults if isinstance(entry, dict) for name in entry}
    for index, word in enumerate(argv):
        key, given, value = word.lstrip("-").partition("=")
        name = key.split(".", 1)[0]
        if not word.startswith("-") or name not in {*ROOT_KEYS, *groups}:
            continue
        following = argv[index + 1] if index + 1 < len(argv) else ""
        if not given and following and not following.startswith("-") and "=" not in following:
            word, value = f"{word} {following}", following
        setting = f"{'+' if name in groups - in_defaults - set(ROOT_KEYS) else ''}{key}="
        setting = shlex.quote(setting + value) if value else f"{setting}<value>"
        raise UserError(f"{word}: python -m stablesdg.train takes settings as key=value words, not options; here: "
                        f"{setting}")


def require_sweeps_where_they_run(overrides: list[str], multirun: bool) -> None:
    """A one-line ``UserError`` for a sweep (``seed=0,1``, ``range(...)``) that Hydra would refuse in five lines or
    more: in a command without ``-m``, which runs one job; or of one of Hydra's own keys, which take one value in a
    multirun too; for the values of a sweep config (``hydra.sweeper.params.stage.strength=0.3,0.5``), the job's own
    key swept on the command line (``stage.strength=0.3,0.5``), which replaces them. A sweep config (``+sweep=seeds``)
    without ``-m`` is refused too: Hydra would run its first job alone, without a word."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group == "sweep" and not multirun:
            raise UserError(f"{override.input_line}: a sweep config's values run a job each only in a multirun: add -m "
                            f"(python -m stablesdg.train -m --config-dir {sweeps_config_dir()} "
                            f"{override.input_line} ...)")
        if not override.is_sweep_override():
            continue
        line, key = override.input_line, override.key_or_group
        values = line.split("=", 1)[1]
        if key.startswith("hydra.sweeper.params."):
            swept = key.removeprefix("hydra.sweeper.params.")
            raise UserError(f"{line}: to sweep other values of {swept}, give them as {swept}={values}"
                            + ("" if multirun else " in a multirun (-m)")
                            + "; on the command line they replace those of the sweep config")
        if key.startswith("hydra.") or key.startswith("hydra/"):
            raise UserError(f"{line}: Hydra's own settings take one value each; a multirun sweeps the job's settings")
        if not multirun:
            listed = override.is_choice_sweep() and not values.startswith("choice(")
            raise UserError(f"{line}: several values run a job each only in a multirun: add -m (python -m "
                            "stablesdg.train -m ...)" + (f"; one value that holds them is a list, {key}=[{values}], "
                                                         f"or quoted text, \"{key}='{values}'\"" if listed else ""))


def check_jobs(overrides: list[str], multirun: bool, config_dir: str | None, primary_dir: str) -> list[list[str]]:
    """A one-line ``UserError`` for the first override of any job of the command (each value of each sweep of a
    multirun: ``schema.sweep_jobs``) that ``schema.check_overrides`` or ``schema.check_hydra_overrides`` refuses,
    composed from ``primary_dir`` with ``config_dir`` on the search path, as Hydra adds ``--config-dir``; a
    ``config_dir`` that is not a folder is refused too. The config is composed once per shape of a job (its overrides
    less its seed, category and variant), and Hydra's own config once per set of its ``hydra`` words. Returns the
    override lists of the jobs it checked, all of which passed."""
    from hydra import compose, initialize_config_dir

    require_sweeps_where_they_run(overrides, multirun)
    if config_dir and not Path(config_dir).is_dir():
        raise UserError(f"--config-dir {config_dir} is not a folder (the sweep configs: --config-dir "
                        f"{sweeps_config_dir()})")
    search = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    groups: dict[str, list[str]] = {}
    for folder in (config_dir, primary_dir) if config_dir else (primary_dir,):
        with initialize_config_dir(config_dir=str(Path(folder).resolve()), version_base="1.3"):
            for group, options in config_groups().items():
                groups[group] = sorted({*groups.get(group, []), *options})
    compose_once = composing_once(lambda top_level: compose(config_name="config", overrides=[*top_level, *search]))
    with initialize_config_dir(config_dir=primary_dir, version_base="1.3"):
        def compose_with_hydra(job_overrides: list[str]) -> DictConfig:
            return compose(config_name="config", overrides=[*job_overrides, *search], return_hydra_config=True)

        swept = config_sweeps(overrides, compose_with_hydra) if multirun else []
        require_sweeper_for_intervals(overrides, compose_with_hydra)
        hydra_checked: set[tuple[str, ...]] = set()
        named: dict[str, str] = {}  # a class: the category word of the first job that named it
        jobs = sweep_jobs([*overrides, *swept]) if multirun else [overrides]
        for job in jobs:
            try:
                check_overrides(job, compose_once, groups)
                if multirun:  # a run checks its own category at once; a multirun's later jobs, hours on
                    require_one_name_per_class(job, require_known_category(job, compose_once), named)
            except UserError as err:
                raise as_swept_by_config(err, job, swept, overrides) from None
            hydra_words = tuple(word for word in job if word.lstrip("+~").startswith("hydra"))
            if hydra_words not in hydra_checked:  # Hydra's own config depends on these words alone
                hydra_checked.add(hydra_words)
                check_hydra_overrides(job, compose_with_hydra)
    return jobs


def as_swept_by_config(err: UserError, job: list[str], swept: list[str], overrides: list[str]) -> UserError:
    """``err``, where it is about a word of ``job`` that the config's sweeps (``swept``) gave, prefixed with the word
    of ``overrides`` that chose that sweep config: ``+sweep=table1_search sweeps category=In: ...``; else ``err``."""
    swept_keys = {word.split("=", 1)[0] for word in swept}
    if not any(word.split("=", 1)[0] in swept_keys and str(err).startswith(f"{word}: ") for word in job):
        return err
    sweep = next((word for word in overrides if word.lstrip("+~").split("=", 1)[0] == "sweep"), "the sweeper's params")
    return UserError(f"{sweep} sweeps {err}")


def require_one_name_per_class(job: list[str], category: str | None, named: dict[str, str]) -> None:
    """A one-line ``UserError`` where ``job``'s ``category=``, which names class ``category``, is another name of a
    class that a category word of an earlier job named (in ``named``: class to word; ``-m category=Pa,patches``): the
    multirun's jobs of both would write one folder, the later replacing the earlier's artifacts. Not where a word
    of the job reads the category (``variant=${category}``), which may give each name a folder of its own."""
    if category is None or any("${category}" in w for w in job):
        return
    word = next(w for w in job if w.lstrip("+~").split("=", 1)[0] == "category")
    before = named.setdefault(category, word)
    if before != word:
        raise UserError(f"{before} and {word} name the same class, {category}: its jobs would write one folder, the "
                        "later replacing the earlier's artifacts; give each class once")


def require_sweeper_for_intervals(overrides: list[str], compose_with_hydra: Callable[[list[str]], DictConfig]) -> None:
    """A one-line ``UserError`` for an interval (``stage.strength=interval(0.3,0.7)``) in a multirun whose sweeper,
    as ``compose_with_hydra`` composes its first job's groups and ``hydra`` settings, is Hydra's basic one: it runs
    the values given, and stops on a stack trace at a search space, which a searching sweeper draws values from."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    interval = next((o for o in OverridesParser.create().parse_overrides(overrides) if o.is_interval_sweep()), None)
    if interval is None:
        return
    try:
        sweeper = compose_with_hydra(_shaping_words(overrides)).hydra.sweeper.get("_target_", "")
    except HydraException:
        return
    if sweeper.endswith(".BasicSweeper"):
        key = interval.get_key_element()
        raise UserError(f"{interval.input_line}: Hydra's basic sweeper runs each value given ({key}=<v1>,<v2> or "
                        f"'{key}=range(<start>,<stop>,<step>)'); an interval is a search space, which "
                        f"hydra/sweeper=optuna draws values from (--config-dir {sweeps_config_dir()} "
                        "+sweep=strength_guidance_optuna sets one up)")


def _shaping_words(overrides: list[str]) -> list[str]:
    """The words of the first job of ``overrides`` that shape the config with Hydra's: its groups, top-level settings
    and ``hydra`` settings."""
    return [word for word in sweep_jobs(overrides)[0]
            if "." not in word.split("=", 1)[0] or word.lstrip("+~").startswith("hydra")]


def config_sweeps(overrides: list[str], compose_with_hydra: Callable[[list[str]], DictConfig]) -> list[str]:
    """The sweeps that a multirun of ``overrides`` takes from its config (``hydra.sweeper.params``, set by a sweep
    config such as ``+sweep=table1_search``), as command-line words (``category=Cr,In,Pa``), less those of keys that
    ``overrides`` sweeps or sets itself, which replace them; composed by ``compose_with_hydra`` from the first job's
    groups and ``hydra`` settings. Where those do not compose, none: the checks of the jobs name the word at fault."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        params = compose_with_hydra(_shaping_words(overrides)).hydra.sweeper.get("params")
    except HydraException:
        return []
    if not params:
        return []
    given = {o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)}
    return [f"{key}={value}" for key, value in params.items() if key not in given]
