"""Settings that go on to a class the config instantiates (Lightning's Trainer, a logger), checked against the
arguments the class takes, so that a misspelt one ends in one line naming the argument meant."""

from __future__ import annotations

import difflib
from typing import Any

from omegaconf import DictConfig

from stablesdg.errors import UserError


def require_library_argument(line: str, group: str, name: str, node: Any, added: bool, value: Any) -> None:
    """A ``UserError`` when ``line`` sets ``<group>.<name>``, a key the group's config ``node`` lacks, to go on to the
    class ``node`` instantiates (Lightning's Trainer, the logger's): the stage passes it itself
    (``STAGE_OWNED_TRAINER_SETTINGS``), or it is set without ``+``, which Hydra would refuse in seven lines (then also
    where the class takes no such argument: ``require_class_argument``). A key added with ``+`` is checked by
    ``require_class_argument`` once the class has loaded, where the run builds it, so that a command's other
    refusals come before torch and Lightning load."""
    if not isinstance(node, DictConfig) or name in node.keys() or "_target_" not in node.keys():
        return
    if group == "trainer":
        from stablesdg.stages.settings import STAGE_OWNED_TRAINER_SETTINGS, stage_owned_trainer_setting

        if name in STAGE_OWNED_TRAINER_SETTINGS:
            raise stage_owned_trainer_setting(name, value)
    if added:
        return
    target = str(node._target_)
    require_class_argument(line, group, name, target)
    raise UserError(f"{line}: the {group} config does not set {group}.{name}; to pass {target} that argument, "
                    f"add it: +{line}")


def require_config_arguments(node: DictConfig, group: str) -> None:
    """``require_class_argument`` for each key of ``node``, the config of ``group`` (``trainer``, ``logger``), against
    the class its ``_target_`` names: ``+trainer.max_step=5`` ends in one line with the argument meant, not in the
    class's own ``TypeError``."""
    for name in node.keys():
        if name != "_target_":
            require_class_argument(f"{group}.{name}", group, str(name), str(node._target_))


def require_class_argument(line: str, group: str, name: str, target: str) -> None:
    """A one-line ``UserError`` for ``line``, which sets ``<group>.<name>``, when the class ``target`` names takes no
    keyword argument ``name``: with the one meant (``did you mean trainer.max_steps?``), or else the ones it takes. A
    class that takes any keyword (``**kwargs``: W&B's logger), or that does not import (Hydra's instantiate says
    why), passes."""
    import inspect

    from hydra.utils import get_class

    try:
        parameters = inspect.signature(get_class(target).__init__).parameters
    except (ImportError, ValueError, TypeError):
        return
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters.values()):
        return
    arguments = [argument for argument, parameter in parameters.items()
                 if argument != "self" and parameter.kind is not parameter.VAR_POSITIONAL]
    if name not in arguments:
        close = difflib.get_close_matches(name, arguments, n=1, cutoff=0.75)
        raise UserError(f"{line}: {target} takes no argument {name}"
                        + (f" (did you mean {group}.{close[0]}?)" if close else f"; it takes {', '.join(arguments)}"))
