"""The typed top level of the config (Hydra refuses ``seed=abc`` composing it), and the checks that turn overrides
Hydra would refuse, or take for something else than meant, into one-line errors before it composes."""

from __future__ import annotations

import difflib
import os
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import QuotedString
from omegaconf import DictConfig, ListConfig, OmegaConf, ValidationError

from stablesdg import library_arguments, setting_hints
from stablesdg.commands import shell_word
from stablesdg.errors import UserError, first_line, is_integer, is_number

SCHEMA_NAME = "stablesdg_schema"
SWEEPS_FOLDER = "multirun_sweeps"


def sweeps_config_dir() -> str:
    """The ``--config-dir`` of the sweep configs as a command should name it: ``multirun_sweeps`` where the current
    folder holds it (the repository's root), else the folder of them that the package holds (an installed wheel's
    copy, or its link into the repository)."""
    if Path(SWEEPS_FOLDER).is_dir():
        return SWEEPS_FOLDER
    return str((Path(__file__).resolve().parent / SWEEPS_FOLDER).resolve())


@dataclass
class RootConfig:
    """Top-level keys; the groups (``dataset``, ``model``, ...) are free-form and checked where they are used."""

    category: Optional[str] = None
    seed: int = 0
    variant: str = "default"
    skip_up_to_date: bool = False
    paths: Any = None
    dataset: Any = None
    model: Any = None
    stage: Any = None
    trainer: Any = None
    logger: Any = None
    classifier: Any = None
    generation: Any = None
    pipeline: Any = None


ROOT_KEYS = tuple(field.name for field in fields(RootConfig))

MAX_SEED = 2**32 - 1  # the largest seed Lightning's seed_everything and numpy accept


def require_seed(seed: Any, key: str = "seed") -> None:
    """A one-line ``UserError`` naming ``key`` unless ``seed`` is an integer from 0 to ``MAX_SEED``."""
    if not is_integer(seed) or not 0 <= seed <= MAX_SEED:
        shown = "null" if seed is None else "nothing" if seed == "" else seed
        raise UserError(f"{key} must be an integer from 0 to {MAX_SEED}, got {shown}")


def register_schema() -> None:
    """Make ``stablesdg_schema`` available to ``conf/config.yaml``'s defaults list, the ``or_all`` resolver
    (``${or_all:${category}}`` is the category, or ``all`` when it is null) and the ``home`` resolver (``${home:
    ${paths.logs}}`` is the folder with a leading ``~`` expanded, as ``HOME_EXPANDED`` settings are)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=RootConfig)
    if not OmegaConf.has_resolver("or_all"):
        OmegaConf.register_new_resolver("or_all", lambda value: "all" if value is None else value)
    if not OmegaConf.has_resolver("home"):
        OmegaConf.register_new_resolver("home", lambda value: os.path.expanduser(str(value)))


# the settings that name files or folders: a leading ``~`` (quoted on the command line, or in a config file) is the
# user's home, not a folder named ``~`` in the current one
HOME_EXPANDED = ("paths.artifacts", "paths.logs", "dataset.root", "model.path", "classifier.weights", "stage.out",
                 "stage.source", "stage.generated", "stage.prior_images", "stage.tuned", "stage.inception_weights")


def expand_home(cfg: DictConfig) -> None:
    """Expand, in place, a leading ``~`` in the ``HOME_EXPANDED`` settings of ``cfg`` that hold one."""
    for key in HOME_EXPANDED:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and value.startswith("~"):
            OmegaConf.update(cfg, key, os.path.expanduser(value))


# Switches that also take a word: model.compile is true, false or a torch.compile mode by name (checked where it is
# used, by stablesdg.choices.compile_mode).
SWITCHES_TAKING_A_WORD = frozenset({"model.compile"})
# Numbers whose default is null ("not set"), so the composed config cannot tell that they are numbers.
NUMBERS_DEFAULTING_TO_NULL = frozenset({"stage.strength", "stage.guidance_scale", "stage.alpha", "stage.max_images",
                                        "stage.num_images", "classifier.depth"})


# Groups whose added keys (``+trainer.gradient_clip_val=1``, ``+logger.entity=me``) go on to a library that checks
# them (Lightning's Trainer, the logger's constructor); a key added anywhere else is read by nothing.
GROUPS_TAKING_NEW_KEYS = ("trainer", "logger", "hydra")
# Config groups that a run reads as absent where deleted (``~logger``: no logger, as ``logger=none``)
DELETABLE_GROUPS = frozenset({"logger"})
# Maps whose keys are the user's to choose (a category's generation settings, a dataset's class names), each with
# an example of its whole value
FREE_FORM_MAPS = {"generation.categories": "{Pa: {strength: 0.5, guidance_scale: 5.0}}",
                  "dataset.classes": "{Cr: crazing, Pa: patches}"}


# Top-level settings whose values change no key of the config (require_top_level_types checks each value): jobs or
# steps that differ only in them are checked against one composed config
PER_JOB_VALUES = ("seed", "category", "variant")


def composing_once(compose: Callable[[list[str]], DictConfig]) -> Callable[[list[str]], DictConfig]:
    """``compose`` for ``check_overrides`` that composes each shape of top-level overrides once: the overrides less
    their ``PER_JOB_VALUES``. A multirun's jobs or a pipeline's steps that differ only in seed, category or variant
    share one composed config (the one composed first), which is only read."""
    composed: dict[tuple[str, ...], DictConfig] = {}

    def compose_shape(top_level: list[str]) -> DictConfig:
        shape = tuple(word for word in top_level if not _per_job_value(word))
        if shape not in composed:
            composed[shape] = compose(list(top_level))
        return composed[shape]

    return compose_shape


def _per_job_value(word: str) -> bool:
    """Whether ``word`` sets one of ``PER_JOB_VALUES``; not where it adds one with a single ``+`` (``+seed=3``), which
    Hydra refuses where the config has it already."""
    added_once = word.startswith("+") and not word.startswith("++")
    return not added_once and word.lstrip("+~").split("=", 1)[0] in PER_JOB_VALUES


def config_groups() -> dict[str, list[str]]:
    """The config groups on the search path of the Hydra initialised now (``--config-dir`` included), each with its
    options; Hydra's own as ``hydra/<group>`` (``hydra/launcher``: basic, joblib, ...)."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    named = [*(group for group in loader.list_groups("") if group != "hydra"),
             *(f"hydra/{group}" for group in loader.list_groups("hydra"))]
    return {group: loader.get_group_options(group) for group in named}


# ``key=[a=1,b=2]``: a list whose items are overrides themselves, unquoted (pipeline.ti, pipeline.sweep.overrides, ...)
UNQUOTED_OVERRIDE_LIST = re.compile(r"^(?P<key>[^=\[\]'\"]+)=\[(?P<items>[^\[\]'\"]*=[^\[\]'\"]*)\]$")
OVERRIDE_GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def require_parsable(words: Sequence[str]) -> None:
    """A one-line ``UserError`` for the first of ``words`` that Hydra's override grammar cannot read, where Hydra would
    print three lines and exit with 1. Where quoting makes it read as meant, the line gives that word: a list of
    overrides left unquoted (``pipeline.ti=[stage.max_steps=500]``, which is also what the shell passes on for
    ``pipeline.ti=["stage.max_steps=500"]`` typed without the outer quotes), a value with non-ASCII characters
    (``category=划痕``: a class folder's name), or text holding characters the grammar gives a meaning (a prompt's
    ``{}``), which the grammar reads only quoted, or a path from ``~`` that the shell left as typed
    (``paths.artifacts=~/store``); anything else gets Hydra's reason."""
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()

    def parse_error(word: str) -> OverrideParseException | None:
        try:
            parser.parse_overrides([word])
        except OverrideParseException as err:
            return err
        return None

    for word in words:
        err = parse_error(word)
        if err is None:
            continue
        key, _, value = word.partition("=")
        listed = UNQUOTED_OVERRIDE_LIST.match(word)
        if listed:
            items = ",".join(f'"{item.strip()}"' for item in listed["items"].split(","))
            raise UserError(f"{word}: each override in a list is quoted, and the whole word too, for the shell: "
                            f"'{listed['key']}=[{items}]'")
        quoted = f"{key}=" + ",".join(f'"{item}"' for item in value.split(","))  # each value of a sweep
        if not value.isascii() and '"' not in value and parse_error(quoted) is None:
            raise UserError(f"{word}: Hydra reads a value with non-ASCII characters only in quotes; quote it, and "
                            f"the whole word too, for the shell: '{quoted}'")
        if value.startswith("~/") and parse_error(f"{key}=/{value[2:]}") is None:  # the shell left it as typed
            raise UserError(f"{word}: the shell expands a ~ only at the start of a word, and Hydra cannot read it "
                            f'here; write "{key}=$HOME/{value[2:]}"')
        text = f'{key}="{value}"'  # a prompt's {}, which Hydra's grammar reads as the start of a map
        if "{" in value and not value.startswith(("[", "{")) and '"' not in value and parse_error(text) is None:
            raise UserError(f"{word}: Hydra reads this value as text only in quotes; quote it, and the whole word "
                            f"too, for the shell: '{text}'")
        reason = next((line for line in str(err).splitlines()
                       if not line.startswith(("Error parsing override", "See https://"))), "a syntax error")
        raise UserError(f"{word}: Hydra cannot read this override ({reason.strip()}); see {OVERRIDE_GRAMMAR}")


def check_overrides(overrides: Sequence[str], compose: Callable[[list[str]], DictConfig],
                    groups: dict[str, list[str]] | None = None) -> None:
    """A one-line ``UserError`` for the first ``key=value`` override that cannot do what it says in
    ``compose(group_overrides)`` (the config with the same groups and top-level keys, none of the dotted overrides):

    * with ``groups`` (``config_groups()``): a top-level key that names no setting or group (``stag=ti``), or an
      option its group lacks (``stage=tl``), with the one it most resembles;
    * a key that no config has, outside ``GROUPS_TAKING_NEW_KEYS`` and free-form maps (an empty or null node, such
      as ``generation.categories``), with the setting it most resembles: set, Hydra would refuse it and suggest
      adding it with ``+``; added (``+``/``++``), nothing would read it, and the run would go on with the default
      the user meant to change;
    * a switch (true or false there; except ``SWITCHES_TAKING_A_WORD``) given anything but true or false, since Hydra
      reads ``stage.preload=no`` as the string 'no', which Python takes as true;
    * a number (there, or one of ``NUMBERS_DEFAULTING_TO_NULL``) given a word (``stage.lr=abc``), outside
      ``trainer.``, whose Lightning arguments take words too (``trainer.devices=auto``);
    * a setting deleted (``~seed``, ``~stage.strength``) that the run reads (``_require_deletable``).

    Sweeps (``a=1,2``) are checked job by job, where each job's override is one value."""
    every = OverridesParser.create().parse_overrides(list(overrides))
    parsed = [o for o in every if not o.is_delete() and not o.is_sweep_override()]
    top_level = [o for o in parsed if "." not in o.key_or_group]
    top_lines = [o.input_line for o in top_level]
    for override in top_level:
        if groups is not None:
            _require_known_top_level(override.input_line, override.key_or_group, override.value(), groups)
            if override.is_force_add() and override.key_or_group in groups:
                raise _group_force_added(override.input_line, top_lines, compose)
        _require_top_level_type(override.input_line, override.key_or_group, _plain(override.value()))
    dotted = [o for o in parsed if "." in o.key_or_group]
    deleted = [o for o in every if o.is_delete()]
    if not dotted and not deleted and not any(o.is_add() for o in top_level):
        return
    defaults = _compose_top_level(top_lines, compose)

    def options_having(key: str) -> list[str]:
        group = key.split(".", 1)[0]
        return setting_hints.options_having(key, group, (groups or {}).get(group, []), top_lines, compose)

    added_back = {o.key_or_group for o in parsed if o.is_add() or o.is_force_add()}
    for override in deleted:
        _require_deletable(override.input_line, override.key_or_group, defaults, groups or {}, options_having,
                           re_added=override.key_or_group in added_back)
    for override in dotted:
        _require_known_key(override.input_line, override.key_or_group, defaults, options_having,
                           added=override.is_add() or override.is_force_add(), value=override.value())
        if override.is_add():
            _require_addable(override.input_line, override.key_or_group, override.value(), defaults)
        _require_kind(override.input_line, override.key_or_group, override.value(), defaults)
        _require_whole_map(override.input_line, override.key_or_group, _plain(override.value()), defaults,
                           added=override.is_add() or override.is_force_add())


def require_known_category(overrides: Sequence[str], compose: Callable[[list[str]], DictConfig]) -> str | None:
    """The class the ``category=`` of ``overrides`` (one job's) names, as its abbreviation (``patches``: ``Pa``); a
    one-line ``UserError`` where it names none of the classes of the dataset that ``compose(top-level overrides)``
    chooses, with the classes it has. None where there is no category, or it is left to the run: given by a dotted
    ``dataset.`` override's classes, or by a folder's sub-folders (no ``dataset.classes``)."""
    from stablesdg.data.categories import CategorySet

    parsed = [o for o in OverridesParser.create().parse_overrides(list(overrides))
              if not o.is_delete() and not o.is_sweep_override()]
    chosen = next((o for o in parsed if o.key_or_group == "category"), None)
    value = None if chosen is None else _plain(chosen.value())
    if value is None or "${" in str(value) or any(o.key_or_group.startswith("dataset.") for o in parsed):
        return None
    classes = compose([o.input_line for o in parsed if "." not in o.key_or_group]).dataset.get("classes")
    if not isinstance(classes, DictConfig) or not len(classes):
        return None
    try:
        return CategorySet(classes).resolve(str(value))
    except UserError as err:
        raise UserError(f"{chosen.input_line}: {err}") from None


def _compose_top_level(lines: list[str], compose: Callable[[list[str]], DictConfig]) -> DictConfig:
    """``compose(lines)`` (the top-level overrides); a one-line ``UserError`` where it fails on a ``+key=value`` of
    them that adds what the config has already (``+seed=3``, ``+model=tiny``), which Hydra refuses in three to five
    lines: the same lines with that one's ``+`` left out compose."""
    from hydra.errors import ConfigCompositionException

    try:
        return compose(lines)
    except ConfigCompositionException:
        for line in lines:
            if line.startswith("+") and not line.startswith("++") and _composes_as(line[1:], line, lines, compose):
                raise _added_again(line) from None
        raise


def _group_force_added(line: str, lines: list[str], compose: Callable[[list[str]], DictConfig]) -> UserError:
    """The refusal of ``line`` (``++group=option``, one of ``lines``), which Hydra refuses in two lines, with the word
    that chooses that option: ``group=option`` where the config chooses one already, else ``+group=option``."""
    word = line[2:] if _composes_as(line[2:], line, lines, compose) else line[1:]
    return UserError(f"{line}: ++ sets or adds a setting, not a config group: write {word}")


def _composes_as(word: str, line: str, lines: list[str], compose: Callable[[list[str]], DictConfig]) -> bool:
    """Whether ``lines`` compose with ``line``, one of them, written as ``word``."""
    from hydra.errors import ConfigCompositionException

    index = lines.index(line)
    try:
        compose([*lines[:index], word, *lines[index + 1:]])
    except ConfigCompositionException:
        return False
    return True


def _require_addable(line: str, key: str, value: Any, defaults: DictConfig) -> None:
    """A ``UserError`` where ``line`` (``+key=value``) adds a value at ``key`` of ``defaults`` that holds one already
    (``+paths.artifacts=/store``), which Hydra refuses in five lines; a map or list given is merged there, and passes."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        current = OmegaConf.select(defaults, key, throw_on_missing=False)
    except OmegaConfBaseException:  # an interpolation that cannot be resolved without the run: left to Hydra
        return
    if current is not None and not isinstance(value, (dict, list)):
        raise _added_again(line)


def _added_again(line: str) -> UserError:
    """The refusal of ``line``, a ``+key=value`` whose key the config has already."""
    key = line[1:].split("=", 1)[0]
    return UserError(f"{line}: the config has {key} already, and + adds only what it lacks: write {line[1:]}")


def _require_known_top_level(line: str, key: str, value: Any, groups: dict[str, list[str]]) -> None:
    """A ``UserError`` when ``key`` names no top-level setting or config group of ``groups`` (group -> its
    options), or ``value`` no option of its group (Hydra's own groups too: ``hydra/launcher=jobib``); Hydra's other
    keys pass. ``+sweep=...`` without the sweep configs' folder on the search path gets the command that reads them."""
    if key.startswith("hydra") and key not in groups:
        return
    names = sorted({*ROOT_KEYS, *(group for group in groups if not group.startswith("hydra/"))})
    if key == "sweep" and key not in groups:
        raise UserError(f"{line}: the sweep configs are in multirun_sweeps/, read by a multirun that names the "
                        f"folder: python -m stablesdg.train -m --config-dir {sweeps_config_dir()} {line} ...")
    if key not in names and key not in groups:
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        raise UserError(f"{line}: there is no setting or config group {key}"
                        + (f" (did you mean {close[0]}?)" if close else f"; choose from {', '.join(names)}"))
    options = groups.get(key)
    if options and str(value) not in options:
        close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.6)
        written = line.partition("=")[0]
        raise UserError(f"{line}: there is no {key} {str(value)!r}; choose from {', '.join(options)}"
                        + (f" (did you mean {written}={close[0]}?)" if close else ""))


def check_hydra_overrides(overrides: Sequence[str], compose_with_hydra: Callable[[list[str]], DictConfig]) -> None:
    """A one-line ``UserError`` where ``compose_with_hydra(overrides)`` (Hydra's own config included) fails on a
    ``hydra.`` key its node lacks (``hydra.launcher.partiton=gpu``), with the key meant, or on a value its key cannot
    hold (``hydra.job.chdir=maybe``), with what it takes; Hydra's own message takes six or seven lines. Overrides
    without a ``hydra.`` key, and every other failure, are left to Hydra."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    if not any(word.lstrip("+~").startswith("hydra.") for word in overrides):
        return
    try:
        composed = compose_with_hydra(list(overrides))
    except ConfigCompositionException as err:
        invalid = err.__cause__  # a value Hydra's typed config cannot hold (hydra.job.chdir=maybe): six lines
        if isinstance(invalid, ValidationError) and invalid.full_key:
            line = _word_setting(overrides, invalid.full_key)
            if line:
                raise UserError(f"{line}: {str(invalid.msg).splitlines()[0]}") from None
        refused = re.match(r"Could not override '(hydra\.[^']+)'", str(err))
        line = refused and _word_setting(overrides, refused[1])
        if not line:
            return
        parent, _, name = refused[1].rpartition(".")
        others = [word for word in overrides if word != line]
        composed = compose_with_hydra(others)
        node = OmegaConf.select(composed, parent, default=None)
        keys = [str(key) for key in node.keys()] if isinstance(node, DictConfig) else []
        if not keys:  # a map of the user's own keys (hydra.job.env_set), which Hydra adds to only with +
            raise UserError(f"{line}: {parent} holds keys of your own, added with +: +{line}") from None
        close = difflib.get_close_matches(name, keys, n=1, cutoff=0.75)
        settings = [key for key in keys if not key.startswith("_")]
        group = parent.replace(".", "/")  # hydra.launcher is chosen by hydra/launcher=...
        chosen = composed.hydra.runtime.choices.get(group)
        having = [] if close or chosen is None else setting_hints.options_having(
            refused[1], group, GlobalHydra.instance().config_loader().get_group_options(group), others, compose_with_hydra)
        owner = f"{parent} ({group}={chosen})" if chosen else parent
        raise UserError(f"{line}: {owner} has no setting {name}" + (
            f" (did you mean {parent}.{close[0]}?)" if close else
            f" ({setting_hints.having_it(having)})" if having else
            f"; it has {', '.join(settings)}" if settings else "")) from None
    _require_hydra_counts(overrides, composed)


def _word_setting(overrides: Sequence[str], key: str) -> str | None:
    """The word of ``overrides`` that sets, adds or deletes ``key``; None where none does."""
    return next((word for word in overrides if word.lstrip("+~").split("=", 1)[0] == key), None)


# Counts of Hydra's plugins that their libraries stop on with a stack trace where they are 0 (joblib's n_jobs) or
# below 1 (Optuna's): what each counts, and whether a negative count means something (joblib's -1: one per CPU core)
HYDRA_COUNTS = {
    "hydra.launcher.n_jobs": ("joblib runs n_jobs jobs at once: a positive count, or -1 for one per CPU core", True),
    "hydra.sweeper.n_trials": ("Optuna's sweeper runs n_trials jobs in all: a positive count", False),
    "hydra.sweeper.n_jobs": ("Optuna's sweeper runs n_jobs jobs at a time: a positive count", False),
}


def _require_hydra_counts(overrides: Sequence[str], composed: DictConfig) -> None:
    """A ``UserError`` for a word of ``overrides`` that sets one of ``HYDRA_COUNTS`` in ``composed`` (Hydra's config
    included) to a count its library cannot run: ``hydra.launcher.n_jobs=0``, ``hydra.sweeper.n_trials=0``."""
    for word in overrides:
        key = word.lstrip("+~").split("=", 1)[0]
        if key not in HYDRA_COUNTS:
            continue
        value = OmegaConf.select(composed, key, default=None)
        takes, negative_counts = HYDRA_COUNTS[key]
        if is_integer(value) and (value == 0 or value < 0 and not negative_counts):
            raise UserError(f"{word}: {takes}")


# ``${``, or ``$\{`` as Hydra's sweeper writes it in a multirun job's overrides
INTERPOLATION = re.compile(r"\$\\?\{")


def as_written(overrides: Sequence[str]) -> list[str]:
    """The words of ``overrides`` (Hydra's ``overrides.task`` of a run) as written: iterating Hydra's list would
    resolve each ``${...}`` in a word against the config, and stop on a stack trace at one that names no key."""
    if isinstance(overrides, ListConfig):
        return [str(word) for word in OmegaConf.to_container(overrides, resolve=False)]
    return list(overrides)


def require_resolvable(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """A one-line ``UserError`` for the first of ``overrides`` (a run's, as written) whose ``${...}`` cannot be
    resolved in ``cfg`` (``stage.prompt=${nosuch}``, ``paths.artifacts=${oc.env:UNSET}``): the run would stop on a
    stack trace where it first reads the value."""
    from omegaconf.errors import InterpolationResolutionError

    for override in OverridesParser.create().parse_overrides(as_written(overrides)):
        if override.is_delete() or override.is_hydra_override() or not INTERPOLATION.search(override.input_line):
            continue
        try:
            value = OmegaConf.select(cfg, override.key_or_group, throw_on_missing=False)
            if isinstance(value, (DictConfig, ListConfig)):
                OmegaConf.to_container(value, resolve=True)
        except InterpolationResolutionError as err:
            reason = re.sub(r"^\w+ raised while resolving interpolation: ", "", first_line(err)).strip('"')
            line = override.input_line.replace("$\\{", "${").replace("\\}", "}")  # as typed, not as swept
            raise UserError(f"{line}: {reason}") from None


def sweep_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """The override lists of jobs that together give each value of each choice or range sweep in ``overrides``
    (``a=1,2 b=x,y,z``: three jobs, job ``i`` taking each sweep's value ``i`` modulo its length), as many as the
    longest sweep; one job where there is none. A search space (Optuna's ``interval(0,1)``, a ``glob``) is left out:
    its values are the sweeper's to draw."""
    choices = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if not override.is_sweep_override():
            choices.append([override.input_line])
        elif override.is_choice_sweep() or override.is_range_sweep():
            prefix = override.input_line.split("=", 1)[0]
            choices.append([f"{prefix}={value}" for value in override.sweep_string_iterator()])
            if not choices[-1]:
                raise UserError(f"{override.input_line}: this sweep holds no value, so the multirun would run no job")
    longest = max((len(values) for values in choices), default=1)
    return [[values[index % len(values)] for values in choices] for index in range(longest)]


def require_top_level_types(words: Sequence[str]) -> None:
    """A one-line ``UserError`` for the first of the override ``words`` (parsable ones) that sets a typed top-level
    setting to what it cannot be (``_require_top_level_type``), each value of a sweep included (``-m seed=0,1.5``),
    where Hydra would refuse the command, or a multirun's job, in five lines."""
    for override in OverridesParser.create().parse_overrides(list(words)):
        if "." in override.key_or_group or override.is_delete():
            continue
        if not override.is_sweep_override():
            values = [override.value()]
        elif override.is_choice_sweep() or override.is_range_sweep():
            values = list(override.sweep_iterator())
        else:
            values = []
        for value in values:
            _require_top_level_type(override.input_line, override.key_or_group, _plain(value))


def _plain(value: Any) -> Any:
    """An override's value with a quoted string (a sweep's item ``'a'``) as its text."""
    return value.text if isinstance(value, QuotedString) else value


def _require_top_level_type(line: str, key: str, value: Any) -> None:
    """A ``UserError`` when ``value`` cannot be the typed top-level setting ``key`` (``RootConfig``): a seed that is
    not a whole number in range, a list of categories (which category=[Pa,Cr] is taken for), a variant that names no
    folder, a switch given anything but true or false (Hydra reads ``no`` as false, ``maybe`` not at all). Hydra's own
    refusal would take five lines and exit with 1. Interpolations are left to Hydra."""
    if isinstance(value, str) and "${" in value:
        return
    if key == "seed":
        try:  # Hydra makes the setting's int of a quoted number (seed='3')
            value = int(value) if isinstance(value, str) else value
        except ValueError:
            pass
        try:
            require_seed(value)
        except UserError as err:
            raise UserError(f"{line}: {err}") from None
    elif key == "category" and isinstance(value, dict):
        raise UserError(f"{line}: category names one class")
    elif key == "category" and isinstance(value, list):
        several = ",".join(map(str, value))
        raise UserError(f"{line}: category names one class; for several, run stage=pipeline "
                        f"'pipeline.categories=[{several}]', or one job each: -m 'category={several}'")
    elif key == "variant" and (value is None or isinstance(value, (list, dict))):
        raise UserError(f"{line}: variant names one set of artifacts, a folder name (default: default)")
    elif key == "skip_up_to_date" and not isinstance(value, bool):
        raise UserError(f"{line}: skip_up_to_date is a switch, set it to true or false")


def _require_deletable(line: str, key: str, defaults: DictConfig, groups: dict[str, list[str]],
                       options_having: Callable[[str], list[str]], re_added: bool) -> None:
    """A ``UserError`` where ``line`` (``~key``) deletes a setting of ``defaults`` that the run would read without it
    (``~seed``, ``~stage.strength``), which Hydra would delete and the run stop on a stack trace, or refuse in three
    lines; or one that ``defaults`` lacks, which Hydra would refuse in two: named as ``_require_known_key`` names an
    unknown key (``~stage.strenght``: did you mean stage.strength?), or, for a trainer's or logger's argument the
    config does not set, with the word that the library's default applies already. A config group whose node the run
    reads (``~model``, ``~stage``: a stack trace) is refused with its options. ``~logger`` (no logger, as
    ``logger=none``), the other groups (``~method``: the pipeline's own defaults), a trainer's or logger's argument the
    config sets (the library's default then applies), a key the same job adds again (``'~dataset.classes'
    '+dataset.classes={...}'``), an entry of a map whose keys are the user's (``~dataset.classes.Cr``) and Hydra's own
    keys are left to Hydra."""
    group = key.split(".", 1)[0]
    if key in groups and key in ROOT_KEYS and key not in DELETABLE_GROUPS and not re_added:
        raise UserError(f"{line}: the run reads {key}, a config group, which cannot be deleted; choose one instead: "
                        f"{key}=<{', '.join(groups[key])}>")
    if key in groups or "/" in key or group == "hydra" or re_added:
        return
    absent = object()
    present = OmegaConf.select(defaults, key, default=absent, throw_on_missing=False,
                               throw_on_resolution_failure=False) is not absent
    if group in GROUPS_TAKING_NEW_KEYS:
        if present:
            return
        raise UserError(f"{line}: the {group} config does not set {key}, so the library's default applies already; "
                        f"leave out {line}")
    parent_key = key.rpartition(".")[0]
    if present and _in_free_form_map(parent_key):
        return  # an entry of a map whose keys are the user's (``~dataset.classes.Cr``: five classes)
    if not present:
        parent = OmegaConf.select(defaults, parent_key, default=None) if parent_key else defaults
        if parent_key and isinstance(parent, DictConfig) and len(parent) and not _in_free_form_map(parent_key):
            _require_known_key(line, key, defaults, options_having, added=False, value=None)
        close = [] if parent_key else difflib.get_close_matches(key, [str(k) for k in defaults], n=1, cutoff=0.6)
        raise UserError(f"{line}: the config has no {key} to delete" + (f" (did you mean ~{close[0]}?)" if close else ""))
    if key in FREE_FORM_MAPS:
        raise UserError(f"{line}: the run reads {key}, which cannot be deleted; to give the map whole, add it back: "
                        f"{shlex.quote(line)} {shlex.quote(f'+{key}={FREE_FORM_MAPS[key]}')}")
    raise UserError(f"{line}: the run reads {key}, which cannot be deleted; set it instead: {key}=<value>")


def _in_free_form_map(key: str) -> bool:
    """Whether ``key`` is one of ``FREE_FORM_MAPS`` or lies inside one."""
    return any(key == known or key.startswith(f"{known}.") for known in FREE_FORM_MAPS)


def _require_known_key(line: str, key: str, defaults: DictConfig, options_having: Callable[[str], list[str]],
                       added: bool, value: Any) -> None:
    """A ``UserError`` when ``key``, set to ``value`` or ``added`` by ``line``, names no setting of ``defaults``
    (``library_arguments.require_library_argument`` for the trainer's and logger's keys), or is set without ``+``
    where its keys are the user's to choose (a free-form, empty or null map), which Hydra would refuse in six lines.
    It names the setting meant: a sibling spelt alike or named with the word given (``stage.steps``:
    ``stage.max_steps``), else the group's options that have ``key`` (``options_having``), else the settings of that
    name elsewhere."""
    parts = key.split(".")
    if len(parts) == 2 and parts[0] in GROUPS_TAKING_NEW_KEYS and parts[0] in defaults:
        library_arguments.require_library_argument(line, parts[0], parts[1], defaults[parts[0]], added, value)
    if parts[0] in GROUPS_TAKING_NEW_KEYS:
        return
    node: Any = defaults
    for depth, part in enumerate(parts):  # down the key's path while it exists (a ??? value exists too)
        parent_key = ".".join(parts[:depth])
        if node is None or (isinstance(node, DictConfig) and (len(node) == 0 or _in_free_form_map(parent_key)
                                                              and part not in node)):
            if added:
                return  # its keys are the user's to choose
            raise UserError(f"{line}: {parent_key} " + ("is null; Hydra adds keys to it only with +" if node is None
                                                        else "holds keys of your own, added with +") + f": +{line}")
        if not isinstance(node, DictConfig):
            raise UserError(f"{line}: {parent_key} is a single value, not a group of settings")
        if part not in node.keys():
            break
        node = "???" if OmegaConf.is_missing(node, part) else node[part]
    else:
        return
    group = parts[0]
    owner = f"{group}={defaults[group].name}" if depth and "name" in defaults[group].keys() else parent_key or "the config"
    siblings = [str(name) for name in node.keys()]
    meant = difflib.get_close_matches(part, siblings, n=1, cutoff=0.75) or setting_hints.named_with_word(part, siblings)
    close = [f"{parent_key}.{name}" if parent_key else name for name in meant]
    having = [] if close or not depth else options_having(key)
    close = close or ([] if having else setting_hints.settings_named(defaults, parts[-1]))
    selection = f" {owner}" if "=" in owner else ""
    hint = (f"did you mean {' or '.join(close)}?" if close else
            setting_hints.having_it(having) if having else
            f"list them with: python -m stablesdg.train{selection} --cfg job --package {group}")
    raise UserError(f"{line}: {owner} has no setting {key}{', so nothing would read it' if added else ''} ({hint})")


def _require_whole_map(line: str, key: str, value: Any, defaults: DictConfig, added: bool) -> None:
    """A ``UserError`` where ``line`` sets one of ``FREE_FORM_MAPS`` whole, without ``+``, to what Hydra cannot take as
    meant: anything but a map (or null) where the config holds a map; a map whose keys the config's lacks, which Hydra
    refuses in six lines; or one that leaves out keys the config's has, which Hydra keeps without a word, since it
    merges a map given into the map there (``dataset=neu 'dataset.classes={Cr: crazing}'`` still reads all six
    classes). The line says how to replace the map (``dataset.classes``), or add to it (``generation.categories``)."""
    current = OmegaConf.select(defaults, key, default=None)
    if added or key not in FREE_FORM_MAPS or not isinstance(current, DictConfig) or value is None:
        return
    if not isinstance(value, dict):
        raise UserError(f"{line}: {key} is a map, e.g. '{key}={FREE_FORM_MAPS[key]}'")
    kept, lacked = [str(k) for k in current if k not in value], [str(k) for k in value if k not in current]
    if not kept and not lacked:
        return  # each of its entries given: the merge replaces them all
    given = line.partition("=")[2]
    holds = f"holds {', '.join(str(k) for k in current)}" if len(current) else "is empty"
    merged = f"refuses the keys it lacks ({', '.join(lacked)})" if lacked else f"keeps {', '.join(kept)} as they are"
    if key == "generation.categories":
        instead = f"to add or change entries, keeping the others: {shlex.quote(f'+{key}={given}')}"
    else:
        entries = "" if lacked else ", or change only its entries: " + " ".join(
            shell_word(f"{key}.{k}", v) for k, v in value.items())
        instead = f"to give the map whole: {shlex.quote(f'~{key}')} {shlex.quote(f'+{key}={given}')}{entries}"
    raise UserError(f"{line}: Hydra merges this map into the config's {key}, which {holds}, so it {merged}; {instead}")


def _require_kind(line: str, key: str, value: Any, defaults: DictConfig) -> None:
    """A ``UserError`` when ``value`` cannot be of the kind of ``key``'s value in ``defaults`` (a switch, a number)."""
    if isinstance(value, bool):
        return  # true or false fits a switch, and where a number is meant, Hydra has refused it
    default = OmegaConf.select(defaults, key, default=None)
    if isinstance(default, bool) and not (key in SWITCHES_TAKING_A_WORD and isinstance(value, str)):
        raise UserError(f"{line}: {key} is a switch, set it to true or false")
    number = is_number(default) or (default is None and key in NUMBERS_DEFAULTING_TO_NULL)
    if number and isinstance(value, str) and not key.startswith("trainer.") and "${" not in value:
        raise UserError(f"{line}: {key} is a number, got {value!r}")
