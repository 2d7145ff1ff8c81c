"""The paper's tables rebuilt from ``result.json`` files, beside the paper's numbers (``paper_results.yaml``).

A table spec names the results it reads (``select``), its rows and columns (more fields each) and the
metric. A cell is the mean ± sample std over every matching result (seeds); a cell with no result is
missing (``None``), never zero.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections import Counter
from dataclasses import dataclass, field as dataclass_field
from importlib import resources
from typing import Any

import yaml

from stablesdg.choices import DIFFUSION_STAGES, STAND_IN_MODELS
from stablesdg.compare import compared_settings, differing_keys
from stablesdg.errors import UserError, is_number
from stablesdg.generated import foreign_set

MISSING = "–"
SCORES = ("fid", "kid_mean", "kid_std")  # metrics computed on a feature extractor's outputs: they compare only
# where the extractor (stage.features) and the number of generated images scored (n_fake) are the same


def paper_tables() -> dict[str, dict]:
    """The table specs and the paper's values shipped with the package (``stablesdg/paper_results.yaml``)."""
    text = resources.files("stablesdg").joinpath("paper_results.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)["tables"]


def field(record: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of ``record`` (``metrics.alpha``), or None."""
    value: Any = record
    for part in str(path).split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _equal(actual: Any, wanted: Any) -> bool:
    if is_number(wanted):
        try:
            return math.isclose(float(actual), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return actual == wanted or str(actual) == str(wanted)


def set_read_by(record: dict[str, Any]) -> str | None:
    """The generated set a result read, as ``generated.set_read`` records it: that of a ``stage=fid`` result, and of a
    classifier's trained on generated images (``stage.mode`` substitute or expand); None for any other result. A
    result written before the set was recorded gives its ``stage.generated`` setting."""
    stage = record.get("stage")
    if stage != "fid" and not (stage == "classify" and field(record, "metrics.mode") in ("substitute", "expand")):
        return None
    read = field(record, "metrics.generated") or field(record, "config.stage.generated")
    return None if read is None else str(read)


def counted(record: dict[str, Any]) -> bool:
    """Whether the tables count ``record`` in its variant's rows: not where it read another method's generated set
    than its variant's (``generated.foreign_set``)."""
    return not foreign_set(set_read_by(record), record.get("variant"))


def matches(record: dict[str, Any], filters: dict[str, Any]) -> bool:
    """Whether ``record`` has every field value in ``filters``."""
    return all(_equal(field(record, key), wanted) for key, wanted in filters.items())


@dataclass
class Cell:
    """Our values of one table cell (one per matching result) and the paper's value."""

    values: list[float]
    paper: float | None = None

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        if len(self.values) < 2:
            return None
        mean = self.mean
        return math.sqrt(sum((v - mean) ** 2 for v in self.values) / (len(self.values) - 1))


@dataclass
class Table:
    """One rebuilt table: labels and a cell per (row, column)."""

    key: str
    title: str
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]
    figure: str | None = None
    # how our FID/KID values were scored: the count of values per stage.features, and per number of generated images
    features: Counter = dataclass_field(default_factory=Counter)
    set_sizes: Counter = dataclass_field(default_factory=Counter)
    # cells whose results differ in more than the seed: (row, column) -> the settings that differ
    mixed_cells: dict[tuple[str, str], list[str]] = dataclass_field(default_factory=dict)
    # cells with a classifier trained on generated images img2img made from training images outside its α-subset
    beyond_alpha: list[tuple[str, str]] = dataclass_field(default_factory=list)
    # how many generated images per class the expanded classifiers added: the count of results per number
    expansions: Counter = dataclass_field(default_factory=Counter)
    # what its values were computed on (machine_label): the count of results per machine
    machines: Counter = dataclass_field(default_factory=Counter)

    def ours(self) -> list[list[float | None]]:
        """Our means, row by row (None where missing)."""
        return [[self.cells[(r, c)].mean for c in self.columns] for r in self.rows]

    def has_results(self) -> bool:
        return any(cell.values for cell in self.cells.values())


def _columns_on(spec: dict[str, Any], select: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The spec's columns, or, where they are the NEU classes and the dataset ``select`` names has others among
    ``records`` (a dataset of your own), those of its classes with results: the NEU ones in the spec's order, then
    the rest sorted."""
    columns = spec["columns"]
    if not all(set(filters or {}) == {"category"} for filters in columns.values()):
        return columns
    found = {str(r.get("category")) for r in records if matches(r, select) and r.get("category")}
    named = {filters["category"] for filters in columns.values()}
    if found <= named:
        return columns
    return {**{c: f for c, f in columns.items() if f["category"] in found},
            **{c: {"category": c} for c in sorted(found - named)}}


def table_select(spec: dict[str, Any], dataset: str | None = None) -> dict[str, Any]:
    """The filters a table's results must match: the spec's ``select``, its NEU dataset replaced by ``dataset``
    (``report --dataset``) where one is given."""
    select = dict(spec.get("select") or {})
    if dataset and select.get("dataset") == "neu":
        select["dataset"] = dataset
    return select


def build_table(key: str, spec: dict[str, Any], records: list[dict[str, Any]], dataset: str | None = None) -> Table:
    """Fill ``spec`` from ``records``. ``dataset`` replaces the spec's NEU dataset (e.g. the quickstart's
    ``synthetic``), so the NEU tables can be read on any dataset: a table whose columns are NEU's classes gets the
    dataset's own classes as its columns where it has others, and its title names the dataset."""
    select = table_select(spec, dataset)
    if select.get("dataset") != (spec.get("select") or {}).get("dataset"):
        spec = {**spec, "columns": _columns_on(spec, select, records),
                "title": f"{spec.get('title', key)} (ours on dataset {dataset})"}
    scale = float(spec.get("scale", 1))
    paper = spec.get("paper") or {}
    cells = {}
    features: Counter = Counter()
    set_sizes: Counter = Counter()
    mixed_cells = {}
    beyond_alpha: list[tuple[str, str]] = []
    expansions: Counter = Counter()
    machines: Counter = Counter()
    for row, row_filters in spec["rows"].items():
        for column, column_filters in spec["columns"].items():
            filters = {**select, **(row_filters or {}), **(column_filters or {})}
            metric = filters.pop("metric", spec.get("metric"))
            if not metric:
                raise UserError(f"table {key}: no metric for row {row!r}, column {column!r}")
            used = [r for r in records if matches(r, filters) and isinstance(field(r, f"metrics.{metric}"), (int, float))
                    and counted(r)]
            cells[(str(row), str(column))] = Cell([float(field(r, f"metrics.{metric}")) * scale for r in used],
                                                  (paper.get(row) or {}).get(column))
            settings = [compared_settings(r) for r in used]
            differing = sorted({key for other in settings[1:] for key in differing_keys(settings[0], other)})
            if differing:
                mixed_cells[(str(row), str(column))] = differing
            if any(is_number(field(r, "metrics.generated_made_beyond_alpha")) and
                   field(r, "metrics.generated_made_beyond_alpha") > 0 for r in used):
                beyond_alpha.append((str(row), str(column)))
            expansions.update(int(field(r, "config.stage.extra_per_class")) for r in used
                              if field(r, "metrics.mode") == "expand" and is_number(field(r, "config.stage.extra_per_class")))
            machines.update(machine_label(r) for r in used)
            if metric in SCORES:
                features.update(str(field(r, "metrics.features")) for r in used if field(r, "metrics.features"))
                set_sizes.update(int(field(r, "metrics.n_fake")) for r in used if is_number(field(r, "metrics.n_fake")))
    return Table(key, spec.get("title", key), [str(r) for r in spec["rows"]], [str(c) for c in spec["columns"]],
                 cells, spec.get("figure"), features, set_sizes, mixed_cells, beyond_alpha, expansions, machines)


UNRECORDED_MACHINE = "a machine not recorded"  # results written before result.json recorded one


def machine_label(record: dict[str, Any]) -> str:
    """What the result ``record`` was computed on, in a few words: its GPU and CUDA version where it ran on one
    (``NVIDIA H200, CUDA 13.0``), else its CPU, the instruction set of torch's CPU kernels and the threads
    (``AMD EPYC, AVX512, 2 threads``); ``UNRECORDED_MACHINE`` for a result that recorded none."""
    machine = record.get("machine")
    if not isinstance(machine, dict) or not (machine.get("gpu") or machine.get("cpu")):
        return UNRECORDED_MACHINE
    if machine.get("gpu"):
        return f"{machine['gpu']}, CUDA {machine.get('cuda')}"
    threads = machine.get("cpu_threads")
    return ", ".join(str(part) for part in (machine["cpu"], machine.get("cpu_capability"),
                                             f"{threads} {'thread' if threads == 1 else 'threads'}" if threads else None)
                     if part)


def machines_note(table: Table) -> str | None:
    """What ``table``'s values were computed on, as one sentence, and where they come from several machines, that
    the same settings and seed give other values on another one; None where the table has no value."""
    if not table.machines:
        return None
    if len(table.machines) == 1:
        return f"Our values were computed on {next(iter(table.machines))}."
    listed = _counts(table.machines, "on", "; ")
    return (f"Our values were computed on {len(table.machines)} machines ({listed}): float rounding differs between "
            "CPU instruction sets and GPUs, so the same settings and seed give other values on another one.")


def _counts(counter: Counter, word: str, separator: str = ", ") -> str:
    """``1 value on inception, 2 on pixels``: how many values had each key of ``counter``, joined by ``word``, the
    keys in order, each count after ``separator`` (``"; "`` where a key holds commas)."""
    (first, n), *rest = sorted(counter.items())
    return separator.join([f"{n} {'value' if n == 1 else 'values'} {word} {first}",
                           *(f"{m} {word} {v}" for v, m in rest)])


def scoring_note(table: Table) -> tuple[str | None, bool]:
    """How ``table``'s FID/KID values were scored, as one sentence (None where it has none), and whether they mix
    feature extractors or set sizes, so that its cells do not compare with each other."""
    if not table.features and not table.set_sizes:
        return None, False
    mixed = [f"feature extractors (stage.features: {_counts(table.features, 'on')})" if len(table.features) > 1 else "",
             f"set sizes ({_counts(table.set_sizes, 'of')} generated images)" if len(table.set_sizes) > 1 else ""]
    mixed = [part for part in mixed if part]
    if mixed:
        return (f"Our FID/KID values mix {' and '.join(mixed)}: values scored differently do not compare; score "
                "every set alike (stage=fid with one stage.features and stage.max_images)."), True
    sizes = f", {next(iter(table.set_sizes))} generated images per set" if table.set_sizes else ""
    if set(table.features) <= {"inception"}:
        return f"Our FID/KID values: InceptionV3 features (stage.features=inception){sizes}.", False
    return (f"Our FID/KID values: stage.features={next(iter(table.features))}{sizes}; they rank runs of this tool "
            "against each other and do not compare with the paper's (InceptionV3 features)."), False


def mixed_cells_note(table: Table) -> str | None:
    """The cells of ``table`` that average results differing in more than the seed, and the settings they differ in,
    as one sentence; None where there are none."""
    if not table.mixed_cells:
        return None
    cells = "; ".join(f"{row} / {column} ({', '.join(keys)})" for (row, column), keys in table.mixed_cells.items())
    return (f"Cells averaging results that differ in more than the seed, which do not belong in one mean: {cells}. "
            "Rerun them alike, or move the odd run to another variant.")


def beyond_alpha_note(table: Table) -> str | None:
    """The cells of ``table`` whose classifiers trained on generated images made from real training images outside
    their α-subset, as one sentence; None where there are none."""
    if not table.beyond_alpha:
        return None
    cells = "; ".join(f"{row} / {column}" for row, column in table.beyond_alpha)
    return (f"Cells whose classifiers trained on generated images that img2img made from real training images outside "
            f"their α-subset (generated_made_beyond_alpha in their result.json): {cells}. Those images show what the "
            "α-subset alone does not; adapt and generate with stage.alpha equal to the classifier's for sets that do not.")


def expansion_note(table: Table) -> str | None:
    """How many generated images per class the expanded classifiers of ``table`` added (``stage.extra_per_class``),
    as one sentence, saying where they differ; None where the table has no expanded classifier."""
    if not table.expansions:
        return None
    if len(table.expansions) == 1:
        return (f"Our expanded classifiers added {next(iter(table.expansions))} generated images per class "
                "(stage.extra_per_class).")
    return ("Our expanded classifiers added different numbers of generated images per class (stage.extra_per_class: "
            f"{_counts(table.expansions, 'with')}), which do not compare.")


def table_notes(table: Table) -> list[str]:
    """The sentences printed under ``table``: how its FID/KID values were scored, which of its cells average unlike
    results, which trained on generated images made beyond their α-subset, and how many generated images its expanded
    classifiers added, and what they were computed on (``scoring_note``, ``mixed_cells_note``, ``beyond_alpha_note``,
    ``expansion_note``, ``machines_note``), where it has any."""
    return [note for note in (scoring_note(table)[0], mixed_cells_note(table), beyond_alpha_note(table),
                              expansion_note(table), machines_note(table)) if note]


def stand_in_note(records: list[dict[str, Any]]) -> str | None:
    """One sentence naming the random-weight stand-ins for SD1.5 (``model=tiny``, ``model=sd15_random``) that made
    any of ``records``' adaptations or generated sets, with how many runs each made; None where none did."""
    used = Counter(str(field(r, "config.model.name")) for r in records
                   if field(r, "stage") in DIFFUSION_STAGES and field(r, "config.model.name") in STAND_IN_MODELS)
    if not used:
        return None
    runs = ", ".join(f"model={name}: {n} {'run' if n == 1 else 'runs'}" for name, n in sorted(used.items()))
    return (f"Made with random-weight stand-ins for SD1.5 ({runs}): the values show that the pipeline runs, not what "
            "the method achieves; the paper's come from SD1.5's trained weights (model=sd15).")


def _number(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.2f}"


def format_cell(cell: Cell) -> str:
    """``mean ± std (n)`` for several results, ``mean`` for one, ``–`` for none."""
    if not cell.values:
        return MISSING
    if len(cell.values) == 1:
        return _number(cell.mean)
    return f"{_number(cell.mean)} ± {_number(cell.std)} (n={len(cell.values)})"


def markdown_text(text: str) -> str:
    """``text`` as Markdown shows it, also in a table cell: ``<unknown>`` is not read as an HTML tag, ``|`` ends no cell."""
    return html.escape(text, quote=False).replace("|", "\\|")


def table_markdown(table: Table) -> str:
    """The table in the paper's layout, each column followed by the paper's value, then its ``table_notes``."""
    header = ["", *[markdown_text(h) for c in table.columns for h in (f"{c} (ours)", f"{c} (paper)")]]
    lines = [f"### {markdown_text(table.title)}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        cells = [table.cells[(row, c)] for c in table.columns]
        numbers = [t for cell in cells for t in (format_cell(cell), _number(cell.paper))]
        lines.append("| " + " | ".join([markdown_text(row), *numbers]) + " |")
    return "\n".join(lines + [line for note in table_notes(table) for line in ("", markdown_text(note))]) + "\n"


def table_csv(table: Table) -> str:
    """The table as CSV: per column our mean, std, count and the paper's value; missing cells are empty."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["row", *[f"{c} {part}" for c in table.columns for part in ("ours", "ours_std", "n", "paper")]])
    for row in table.rows:
        out = [row]
        for column in table.columns:
            cell = table.cells[(row, column)]
            out += ["" if v is None else v for v in (cell.mean, cell.std, len(cell.values) or None, cell.paper)]
        writer.writerow(out)
    return text.getvalue()
