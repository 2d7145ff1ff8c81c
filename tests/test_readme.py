"""Every ``python -m stablesdg.train`` command the README shows composes as the CLI would compose it: its groups,
options and keys exist, its switches and numbers are of their kind, and it leaves no setting without a value."""

from __future__ import annotations

import re
import shlex

import pytest
from hydra import initialize_config_dir

from conftest import CONFIG_DIR, REPO, SWEEP_DIR, compose_config
from stablesdg.schema import check_overrides, config_groups, sweep_jobs
from stablesdg.train import missing_values, plan

ENTRY_POINT = "python -m stablesdg.train"


def readme_commands() -> list[str]:
    """The README's ``python -m stablesdg.train`` commands in its code blocks, a command continued with ``\\`` on
    one line; the usage line with its ``<placeholders>`` aside."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip().startswith(ENTRY_POINT) and "<" not in line:
                commands.append(line.strip())
    return commands


def jobs_of(command: str) -> tuple[list[list[str]], bool]:
    """The override lists of ``command``'s jobs (``schema.sweep_jobs``; ``...`` left out), and whether it searches
    ``multirun_sweeps`` (``--config-dir``)."""
    words = shlex.split(command[len(ENTRY_POINT):], comments=True)
    with_sweeps = "--config-dir" in words
    if with_sweeps:
        assert words[words.index("--config-dir") + 1] == SWEEP_DIR.name
        del words[words.index("--config-dir"):words.index("--config-dir") + 2]
    return sweep_jobs([word for word in words if word not in ("-m", "--multirun", "...")]), with_sweeps


COMMANDS = readme_commands()


def test_the_readme_shows_a_command_for_every_stage():
    stages = {p.stem for p in (CONFIG_DIR / "stage").glob("*.yaml")}
    shown = {word.split("=", 1)[1] for command in COMMANDS for word in command.split() if word.startswith("stage=")}
    assert stages <= shown, f"no README command for stage={', stage='.join(sorted(stages - shown))}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_composes_with_each_setting_it_names(command, tmp_path):
    jobs, with_sweeps = jobs_of(command)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        groups = config_groups()
    for job in jobs:
        check_overrides(job, lambda overrides: compose_config(overrides, with_sweeps), groups)
        cfg = compose_config([*job, f"paths.artifacts={tmp_path}"], with_sweeps)  # hydra.* and hydra/* applied too
        assert missing_values(cfg) == [], f"{command}: job {job} leaves {missing_values(cfg)} without a value"
        plan(cfg)


def test_every_link_within_the_readme_leads_to_one_of_its_headings():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # a shell comment in a code block is no heading

    def anchor(heading: str) -> str:  # GitHub's: lower case, punctuation but - and _ dropped, each space a -
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    anchors = {anchor(heading) for heading in re.findall(r"^#{1,6} (.+)$", prose, flags=re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert [link for link in links if link not in anchors] == []
    sections = [anchor(heading) for heading in re.findall(r"^## (.+)$", prose, flags=re.M)]
    assert [section for section in sections if section not in links] == [], "the contents line names every section"


# keys a user does not set: what an option is called and the class it builds
NOT_SETTINGS = {"_target_", "name", "arch"}


def test_the_readme_names_every_setting_of_each_stage_and_group():
    """Each key of each stage's config (``stage.<key>``, or the key in backticks where a table lists a stage's keys)
    and of the default config's other groups is named in the README."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    unnamed = []
    for option in sorted(p.stem for p in (CONFIG_DIR / "stage").glob("*.yaml")):
        for key in compose_config([f"stage={option}"]).stage.keys():
            if key not in NOT_SETTINGS and f"stage.{key}" not in readme and f"`{key}`" not in readme:
                unnamed.append(f"stage={option}: stage.{key}")
    defaults = compose_config([])
    for group in ("dataset", "model", "classifier", "pipeline", "generation"):
        for key in defaults[group].keys():
            if key not in NOT_SETTINGS and f"{group}.{key}" not in readme and f"`{key}`" not in readme:
                unnamed.append(f"{group}.{key}")
    assert unnamed == []
