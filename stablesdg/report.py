"""``python -m stablesdg.report``: the paper's tables and figures rebuilt from ``result.json`` files only.

Sub-commands:

* ``tables`` (the default): every table and figure of ``stablesdg/paper_results.yaml`` with the paper's
  numbers beside ours, as Markdown, CSV and PNG under ``<artifacts>/report/`` (``report.md`` indexes them),
  plus real-versus-generated image grids; ``--wandb`` also logs them to W&B, one section per table.
* ``sweep --dataset NAME [--variant V] [--metric fid]``: aggregate an (s, ω) sweep (``stablesdg.sweeps``).
* ``status [--dataset NAME]``: each stage folder's state: finished, stale, running, unfinished or damaged
  (``stablesdg.status``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from stablesdg import artifacts, atomic_files
from stablesdg.errors import UserError, file_in_the_way, find_user_error
from stablesdg.generated import foreign_set_advice
from stablesdg.plots import bars_png, heatmap_png, lines_png
from stablesdg.provenance import versions_text
from stablesdg.status import stale_because, store_states
from stablesdg.store_layout import REPORT_DIR, TUNED_FILE, sweep_folder
from stablesdg.sweeps import METRICS, aggregate_sweep
from stablesdg.tables import (
    Table, build_table, counted, markdown_text, mixed_cells_note, paper_tables, scoring_note, set_read_by,
    stand_in_note, table_csv, table_markdown, table_notes, table_select,
)


def table_figure(table: Table, path: Path) -> bool:
    """The table's figure (heatmap, lines or bars) from our means; False if it has none or no values."""
    ours = table.ours()
    if not table.figure or not table.has_results():
        return False
    if table.figure == "heatmap":
        import numpy as np

        values = np.array([[float("nan") if v is None else v for v in row] for row in ours])
        heatmap_png(values, table.rows, table.columns, path, xlabel="guidance scale ω", ylabel="strength s",
                    fmt="{:.2f}", title=table.title, cmap="viridis_r")
    elif table.figure == "lines":
        lines_png(table.rows, {c: [row[j] for row in ours] for j, c in enumerate(table.columns)}, path,
                  xlabel="LoRA rank", title=table.title)
    elif table.figure == "bars":
        bars_png(table.columns, {r: ours[i] for i, r in enumerate(table.rows)}, path, ylabel="test accuracy (%)",
                 title=table.title)
    else:
        raise UserError(f"table {table.key}: unknown figure {table.figure!r} (heatmap, lines, bars)")
    return True


def _wandb_run(logs: str):
    import wandb

    from stablesdg.choices import require_wandb_credentials, require_wandb_mode

    mode = require_wandb_mode(os.environ.get("WANDB_MODE", "offline"), "WANDB_MODE")
    require_wandb_credentials(mode, "WANDB_MODE")
    Path(logs).mkdir(parents=True, exist_ok=True)  # in a folder not there yet, W&B warns that it has no git root
    return wandb.init(project="stablesdg", name="report", group="report", job_type="report", dir=logs, mode=mode)


def stale_note(root: str | Path, records: list[dict[str, Any]]) -> str | None:
    """A note naming how many of ``records`` were made from artifacts remade or removed since, or from model weights
    or files a setting names since replaced (``status.stale_because``), whose numbers may no longer describe the
    store; None when there are none."""
    stale = [record for record in records if stale_because(root, record)]
    if not stale:
        return None
    first = Path(stale[0]["_path"]).parent.relative_to(root).as_posix()
    return (f"{len(stale)} of these results (first: {first}) were made from artifacts remade or removed since, or "
            "from model weights or other files replaced since, so their numbers may not describe the artifacts now; "
            "`python -m stablesdg.report status` names them, and running their stages again brings them up to date.")


def foreign_set_note(root: str | Path, records: list[dict[str, Any]]) -> str | None:
    """A note naming how many of ``records`` no table counts because they read another method's generated set than
    their variant's (``tables.counted``), with the first and what gives it a row; None when there are none."""
    foreign = [record for record in records if not counted(record)]
    if not foreign:
        return None
    first = foreign[0]
    where = Path(first["_path"]).parent.relative_to(root).as_posix()
    return (f"{len(foreign)} of these results read another generated set than their variant's own and are in no table "
            f"(first: {where}): {foreign_set_advice(set_read_by(first), first.get('variant'))}.")


def unread_note(records: list[dict[str, Any]], dataset: str | None) -> str | None:
    """A note naming the datasets of ``records`` that no table reads (a dataset of your own, read only with
    ``--dataset``), with their number of results; None when every result's dataset is read."""
    read = {table_select(spec, dataset).get("dataset") for spec in paper_tables().values()}
    unread = Counter(str(r.get("dataset")) for r in records if r.get("dataset") not in read)
    if not unread:
        return None
    held = ", ".join(f"{name} ({n} {'result' if n == 1 else 'results'})" for name, n in sorted(unread.items()))
    first = sorted(unread)[0]
    return f"no table reads the results of {held}: --dataset {first} reads the NEU tables on " \
           + ("it" if len(unread) == 1 else f"{first}, and likewise for the other{'s' if len(unread) > 2 else ''}")


def empty_note(root: str | Path, records: list[dict[str, Any]]) -> str | None:
    """A note where the store ``root`` holds no result at all (no stage has finished there, or ``--artifacts`` names
    another folder than the store meant), so every table would be empty; None otherwise."""
    if records:
        return None
    return (f"{root} holds no result.json, so every table is empty: run the stages first (make quickstart, or "
            "python -m stablesdg.train stage=pipeline ...), or name the store they wrote with --artifacts")


def write_report(root: str | Path, out: str | Path | None = None, dataset: str | None = None,
                 wandb_logs: str | None = None, dataset_roots: dict[str, str] | None = None) -> dict[str, Any]:
    """Write every table (MD, CSV, figure), the image grids and ``report.md``; return what was written. The grids'
    real images come from where each dataset is now (``dataset_roots``: its folder by its name; see
    ``grids.dataset_root_now``).

    With ``wandb_logs`` the tables go to W&B as ``wandb.Table`` under ``<table>/table`` and the figures and
    grids as images, so a dashboard shows one section per table.
    """
    from stablesdg.grids import comparison_grids  # torch and torchvision, which `report status` and `sweep` need not load

    records = artifacts.load_results(root)
    run = _wandb_run(wandb_logs) if wandb_logs else None
    out = Path(out) if out else Path(root) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    stand_ins = stand_in_note(records)
    stale = stale_note(root, records)
    unread = unread_note(records, dataset)
    foreign = foreign_set_note(root, records)
    empty = empty_note(root, records)
    index = ["# StableSDG report", "", f"Results read from `{root}` ({len(records)} result.json files). "
             "Ours: mean ± sample std (n results) where several seeds ran; – = no result / not transcribed.", "",
             *[line for note in (empty, stand_ins, stale, unread, foreign) if note
               for line in (f"**{markdown_text(note)}**", "")]]
    written: dict[str, Any] = {"tables": {}, "grids": [], "stand_ins": stand_ins, "stale": stale, "unread": unread,
                               "foreign": foreign, "empty": empty}
    if run is not None and (stand_ins or stale or foreign):
        run.summary["notes"] = " ".join(note for note in (stand_ins, stale, foreign) if note)
    for key, spec in paper_tables().items():
        table = build_table(key, spec, records, dataset)
        markdown = table_markdown(table)
        atomic_files.write_bytes_atomic(out / f"{key}.md", markdown.encode("utf-8"))
        atomic_files.write_bytes_atomic(out / f"{key}.csv", table_csv(table).encode("utf-8"))
        figure = out / f"{key}.png"
        has_figure = table_figure(table, figure)
        index += [markdown, f"![{key}]({key}.png)\n" if has_figure else ""]
        written["tables"][key] = table
        if run is not None:
            import wandb

            columns = ["row", *table.columns]
            data = [[r, *row] for r, row in zip(table.rows, table.ours())]
            run.log({f"{key}/table": wandb.Table(columns=columns, data=data)})
            notes = table_notes(table)
            if notes:
                run.summary[f"{key}/notes"] = " ".join(notes)
            if has_figure:
                run.log({f"{key}/figure": wandb.Image(str(figure))})
    grids = comparison_grids(records, root, out / "grids", roots=dataset_roots)
    index += ["## Real (first row) vs generated images", ""]
    for grid in grids:
        relative = grid["path"].relative_to(out)
        label = markdown_text(f"{grid['dataset']} {grid['category']}")
        index += [f"**{label}** — rows: {markdown_text(', '.join(grid['rows']))}", "",
                  f"![{grid['category']}]({relative})", ""]
        if run is not None:
            import wandb

            run.log({f"grids/{grid['dataset']}_{grid['category']}": wandb.Image(str(grid["path"]),
                                                                                  caption=", ".join(grid["rows"]))})
    written["grids"] = grids
    atomic_files.write_bytes_atomic(out / "report.md", "\n".join(index).encode("utf-8"))
    if run is not None:
        run.finish()
    written["index"] = out / "report.md"
    return written


def print_status(root: str, dataset: str | None) -> None:
    """Print one line per stage folder of the store at ``root`` (its path, state and detail), then the counts."""
    states = store_states(root, dataset)
    width = max((len(s.folder) for s in states), default=0)
    for s in states:
        print(f"{s.folder:<{width}}  {s.state:<10}  {s.detail}")
    counts = {name: sum(s.state == name for s in states)
              for name in ("finished", "stale", "running", "unfinished", "damaged")}
    print(", ".join(f"{n} {name}" for name, n in counts.items() if n) or f"no stage folders under {root}")


def folder_argument(value: str) -> str:
    """``value``, a leading ``~`` expanded (``--out=~/report``, which the shell leaves as it is), unless it is empty or
    blank, which as a path would mean the current folder (an unset shell variable is the usual cause), or names a file
    or a path inside one: then the parser's one-line refusal of that argument."""
    if not value.strip():
        raise argparse.ArgumentTypeError("names no folder (an unset shell variable leaves it empty)")
    value = os.path.expanduser(value)
    problem = file_in_the_way(value)
    if problem:
        raise argparse.ArgumentTypeError(f"{value} {problem}")
    return value


def dataset_root_argument(value: str) -> tuple[str, str]:
    """``NAME=DIR`` as ``(NAME, DIR)`` where DIR is a folder; else the parser's one-line refusal of the argument."""
    name, equals, folder = value.partition("=")
    if not equals or not name.strip() or not folder.strip():
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=DIR (e.g. neu=/data/NEU-DET)")
    if not Path(folder).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{folder} is not a folder")
    return name, str(Path(folder).expanduser())


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, whose refusal of the command line is one line, ``error: ...`` and exit code 2, as every other
    error of the report's, not its usage followed by the message; ``--help`` still prints the usage. Its sub-commands'
    parsers are of this class too (``add_subparsers`` makes them of their parent's)."""

    def error(self, message: str):
        unknown = " (--help lists the options)" if message.startswith("unrecognized arguments") else ""
        self.exit(2, f"error: {message}{unknown}\n")


HYDRA_WORDS = {"paths.artifacts": "--artifacts", "dataset": "--dataset", "variant": "--variant"}  # train's key: ours


def hydra_word_advice(argv: list[str]) -> str | None:
    """For the first word of ``argv`` written as ``stablesdg.train`` takes its settings (``key=value``, not an
    option's value), the sentence that says the report takes options, naming the one that sets it where there is
    one; else None."""
    word = next((w for before, w in zip(["", *argv], argv)
                 if re.match(r"[A-Za-z_][\w.]*=", w) and not (before.startswith("--") and "=" not in before)), None)
    if word is None:
        return None
    key, _, value = word.partition("=")
    option = HYDRA_WORDS.get(key)
    instead = f"; here: {option} {shlex.quote(value)}" if option else " (python -m stablesdg.report --help lists them)"
    return f"{word}: the report takes options (--artifacts, --dataset, ...), not key=value settings{instead}"


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the sub-command; a ``UserError`` prints one line and returns 2, Ctrl-C one line and
    130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "tables")  # the default sub-command
    parser = OneLineParser(prog="python -m stablesdg.report", description=__doc__.splitlines()[0].replace("``", ""),
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # --version's lines as they are
    parser.add_argument("--version", action="version", version=versions_text(),
                        help="the versions of StableSDG, Python and the libraries that shape its results")
    commands = parser.add_subparsers(dest="command", required=True)
    tables = commands.add_parser("tables", help="the paper's tables and figures, ours beside the paper's (default)")
    sweep = commands.add_parser("sweep", help="aggregate a strength/guidance sweep and pick the best setting")
    status = commands.add_parser("status", help="each stage folder's state: finished, stale, running, unfinished, damaged")
    status.add_argument("--dataset", help="only this dataset's folders")
    for sub in (tables, sweep, status):
        sub.add_argument("--artifacts", default="artifacts", type=folder_argument,
                         help="the artifact store to read (default: artifacts)")
    tables.add_argument("--out", type=folder_argument, help="output folder (default: <artifacts>/report)")
    tables.add_argument("--dataset", help="read the NEU tables on this dataset instead (e.g. synthetic for the quickstart)")
    tables.add_argument("--dataset-root", metavar="NAME=DIR", type=dataset_root_argument, action="append",
                        default=[], help="where dataset NAME's images are now, for the grids' real rows, where its "
                        "runs' dataset.root is gone (moved, or read on another machine; repeatable)")
    tables.add_argument("--wandb", metavar="LOG_DIR", type=folder_argument,
                        help="also log to W&B (offline unless WANDB_MODE=online), run files under LOG_DIR")
    sweep.add_argument("--dataset", required=True, help="the dataset whose sweep points to read (e.g. neu)")
    sweep.add_argument("--variant", default="default", help="the variant the sweep ran under (default: default)")
    sweep.add_argument("--metric", default="fid", choices=METRICS,
                       help="the score whose lowest value picks each category's setting (default: fid)")
    advice = hydra_word_advice(argv)
    if advice:
        parser.error(advice)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if not Path(args.artifacts).is_dir():
            raise UserError(f"--artifacts {args.artifacts} is not a folder")
        if args.command == "sweep":
            best = aggregate_sweep(args.artifacts, args.dataset, args.variant, args.metric)
            for category, setting in best.items():
                print(f"{category}: strength {setting['strength']:g}, guidance_scale {setting['guidance_scale']:g}, "
                      f"{args.metric} {setting[args.metric]:.4f}")
            print(f"tuned settings: {sweep_folder(args.artifacts, args.dataset, args.variant) / TUNED_FILE}")
            return 0
        if args.dataset is not None:
            artifacts.require_directory_name("dataset", args.dataset)
        held = sorted(p.name for p in Path(args.artifacts).iterdir() if p.is_dir() and p.name != "report")
        roots = getattr(args, "dataset_root", [])  # report tables' alone
        asked = [("--dataset", args.dataset), *(("--dataset-root", name) for name, _ in roots)]
        for flag, name in asked:
            if name is not None and name not in held:
                raise UserError(f"{flag} {name}: {args.artifacts} holds no artifacts of it "
                                f"(it holds: {', '.join(held) or 'none'})")
        if args.command == "status":
            print_status(args.artifacts, args.dataset)
            return 0
        written = write_report(args.artifacts, args.out, args.dataset, args.wandb, dict(args.dataset_root))
    except KeyboardInterrupt:  # each file is written whole, but some may be this run's and others the last one's
        print(f"error: python -m stablesdg.report {args.command} stopped by Ctrl-C; run the same command again to "
              "finish it", file=sys.stderr)
        return 130
    except Exception as exc:
        # a UserError, or a storage problem (no space, no such or read-only folder)
        user_error = find_user_error(exc, storage_hint="check --artifacts, --out, --wandb and free space")
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        return 2
    for key, table in written["tables"].items():
        filled = sum(bool(c.values) for c in table.cells.values())
        note, mixed = scoring_note(table)
        features = set(table.features)
        comparable = "" if mixed or features <= {"inception"} else \
            f" (FID/KID on {', '.join(sorted(features))} features: not comparable with the paper's)"
        print(f"{key}: {filled} of {len(table.cells)} cells{comparable}")
        for warning in (note if mixed else None, mixed_cells_note(table)):
            if warning:
                print(f"warning: {key}: {warning}", file=sys.stderr)
    if written["stand_ins"]:
        print(f"note: {written['stand_ins']}")
    for warning in (written["empty"], written["stale"]):
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    for note in (written["unread"], written["foreign"]):
        if note:
            print(f"note: {note}")
    print(f"report: {written['index']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
