"""Commands made for the user: a pipeline's step overrides, the command a message says to run, which carries the
running command's own settings (its dataset folder, model, artifact store) so that it makes what is missing where
this command reads it, and the report command that reads what a pipeline made."""
from __future__ import annotations

import shlex
from typing import Any

# what a stage command names itself; the pipeline's and Hydra's own settings shape no single stage
STAGE_COMMAND_SETS = ("stage", "category", "variant", "pipeline", "hydra")


def override_word(key: str, value: Any) -> str:
    """``key=value`` as an override that Hydra reads back as ``value``: a string the grammar would read as something
    else (``0``, ``null``, ``true``) or not at all (non-ASCII characters, a class folder's name) is quoted."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    plain = f"{key}={value}"
    if not isinstance(value, str):
        return plain
    try:
        if OverridesParser.create().parse_overrides([plain])[0].value() == value:
            return plain
    except OverrideParseException:
        pass
    quote = "'" if '"' in value else '"'
    return f"{key}={quote}{value}{quote}"


def shell_word(key: str, value: Any) -> str:
    """``override_word(key, value)`` quoted for the shell where it needs it, so a message's ``category=...`` can be
    copied into a command as it stands (``'category=pitted surface'``)."""
    return shlex.quote(override_word(key, value))


def own_overrides(*dropped: str) -> list[str] | None:
    """The running command's own overrides (a multirun job's, one value each), without those whose key is one of
    ``dropped`` or a setting within one (``stage`` drops ``stage.lr`` too); None outside a run that Hydra started (a
    config composed in Python has no command line)."""
    from hydra.core.hydra_config import HydraConfig

    from stablesdg.schema import as_written

    if not HydraConfig.initialized():
        return None
    kept = []
    for override in as_written(HydraConfig.get().overrides.task):
        key = override.split("=", 1)[0].lstrip("+~")
        if not any(key == name or key.startswith((f"{name}.", f"{name}/")) for name in dropped):
            kept.append(override)
    return kept


def stage_command(stage: str, dataset: str, category: str, variant: str, *extra: str) -> str:
    """``python -m stablesdg.train stage=<stage> … category=<category> variant=<variant> <extra>``, where ``…`` is the
    running command's own overrides other than its stage's settings (``STAGE_COMMAND_SETS``): its dataset, model,
    trainer and artifact store; ``dataset=<dataset>`` outside a Hydra run. Each word is quoted for Hydra and the
    shell where they need it."""
    own = own_overrides(*STAGE_COMMAND_SETS)
    words = [f"stage={stage}", *(own if own is not None else [f"dataset={dataset}"]),
             override_word("category", category), override_word("variant", variant), *extra]
    return "python -m stablesdg.train " + " ".join(shlex.quote(word) for word in words)


def report_command(store: str, dataset: str) -> str:
    """The ``python -m stablesdg.report`` command, quoted for the shell, that reads the store ``store`` and, where no
    paper table is of ``dataset`` (one's own, the quickstart's synthetic set), reads the NEU tables on it."""
    from stablesdg.tables import paper_tables

    tabled = {spec.get("select", {}).get("dataset") for spec in paper_tables().values()}
    command = ["python", "-m", "stablesdg.report", "--artifacts", str(store)]
    return shlex.join(command if dataset in tabled else [*command, "--dataset", dataset])
