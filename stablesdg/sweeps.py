"""Aggregating an (s, ω) sweep: the FID matrix per category, its heatmap, and the best setting per category.

Sweep jobs are ``stage=generate`` runs with ``stage.score=true`` whose artifact folders are named
``sweep_s<strength>_g<guidance>``. The aggregation reads only their ``result.json`` files and writes,
under ``<artifacts>/<dataset>/sweeps/<variant>/``:

* ``fid_<category>.csv`` / ``.md``: the s × ω matrix of the metric (missing cells empty / "–"),
* ``fid_<category>.png``: its heatmap,
* ``tuned_generation.yaml``: ``{category: {strength, guidance_scale, fid}}``, the minimum per category,
  which ``stage=generate stage.tuned=<that file>`` uses directly.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from stablesdg import artifacts, atomic_files, model_files, provenance, setting_files
from stablesdg.compare import differing_keys
from stablesdg.errors import UserError, is_number
from stablesdg.plots import heatmap_png
from stablesdg.store_layout import TUNED_FILE, sweep_folder

log = logging.getLogger(__name__)

SWEEP_PREFIX = "sweep_"
METRICS = ("fid", "kid_mean")  # the scores a sweep point records; the lowest picks a category's setting
# stage settings that change no sweep point's score: the swept values, the folder's name and how the work is done
_UNSCORED_STAGE = ("strength", "guidance_scale", "artifact_name", "tuned", "batch_size", "grid_images", "score",
                   *provenance.RUN_MECHANICS)
_UNSCORED_MODEL = ("compile", "channels_last", *provenance.MODEL_MECHANICS)


def scoring_settings(record: dict[str, Any]) -> dict[str, Any]:
    """What a sweep point's score depends on besides its (s, ω), from its ``result.json``: the stage's settings (the
    number of images, steps, scheduler, adapter, prompt, features, real split, ...), the seed, the model, the dataset
    (the model and the InceptionV3 file by their files' digest where the point recorded one, not by where they lay)
    and the checksums of the adapters it loaded. Two points compare only where these are equal."""
    # less where its files and the dataset's images are (provenance.SETTINGS_NOT_SHAPING_RESULTS), as make's rule
    config = provenance.settings_shaping_results(provenance.without_later_defaults(record.get("config") or {}))
    model = {k: v for k, v in (config.get("model") or {}).items() if k not in _UNSCORED_MODEL}
    if record.get(model_files.RECORD_KEY):  # its files' digest, wherever they lay
        model = model_files.by_content({"model": model}, record[model_files.RECORD_KEY])["model"]
    stage = {k: v for k, v in (config.get("stage") or {}).items() if k not in _UNSCORED_STAGE}
    inception = setting_files.recorded_digests(record).get("stage.inception_weights")
    if inception:  # the InceptionV3 file's digest, wherever it lay
        stage["inception_weights"] = inception
    return {"stage": stage,
            "model": model,
            "dataset": dict(config.get("dataset") or {}),
            "seed": config.get("seed"), "adapter_checksums": (record.get("metrics") or {}).get("adapter_checksums")}


def comparable_points(points: list[dict[str, Any]], like: str | Path | None = None) -> list[dict[str, Any]]:
    """The sweep points of one category scored like its newest one, or like the point in folder ``like`` where it
    is one of them (``scoring_settings``); a warning says how many others were left out and which settings differ
    (an earlier sweep with fewer images or other features, whose scores do not compare)."""
    chosen = [r for r in points if like is not None and Path(r["path"]) == Path(like)]
    reference = chosen[0] if chosen else max(points, key=lambda r: r["finished_ns"])
    kept = [r for r in points if r["settings"] == reference["settings"]]
    if len(kept) < len(points):
        differing = sorted({key for r in points for key in differing_keys(r["settings"], reference["settings"])})
        log.warning("sweep of %s: %d of its %d points were scored with other settings than %s%s (%s) and are "
                    "left out; delete their folders, or sweep into another variant, to keep sweeps apart",
                    reference["category"], len(points) - len(kept), len(points), Path(reference["path"]).name,
                    "" if chosen else ", the newest", ", ".join(differing))
    return kept


def collect_sweep(root: str | Path, dataset: str, variant: str = "default", metric: str = "fid") -> list[dict[str, Any]]:
    """One row per finished sweep job: category, strength, guidance_scale, the metric, its folder, its result's
    time (``artifacts.finished_time``) and its ``scoring_settings``."""
    rows = []
    for record in artifacts.load_results(Path(root, dataset), f"*/{variant}/{SWEEP_PREFIX}*/{artifacts.RESULT_FILE}"):
        metrics = record.get("metrics", {})
        if metric not in metrics:
            continue
        if not (isinstance(record.get("category"), str) and all(is_number(metrics.get(key)) for key in
                                                                 ("strength", "guidance_scale", metric))):
            log.warning("skipped %s: it has no category, or no number for strength, guidance_scale or %s",
                        record["_path"], metric)
            continue
        rows.append({"category": record["category"], "strength": metrics["strength"],
                     "guidance_scale": metrics["guidance_scale"], metric: metrics[metric],
                     "path": str(Path(record["_path"]).parent),
                     "finished_ns": artifacts.finished_time(record["_path"], record),
                     "settings": scoring_settings(record)})
    return rows


def _markdown(matrix: np.ndarray, strengths: list[float], guidances: list[float], metric: str) -> str:
    lines = [f"| s \\ ω ({metric}) | " + " | ".join(f"{g:g}" for g in guidances) + " |",
             "|---" * (len(guidances) + 1) + "|"]
    for s, row in zip(strengths, matrix):
        lines.append(f"| {s:g} | " + " | ".join("–" if np.isnan(v) else f"{v:.3f}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def aggregate_sweep(root: str | Path, dataset: str, variant: str = "default", metric: str = "fid",
                    logger: Any = None, like: str | Path | None = None,
                    logged: Collection[str] | None = None) -> dict[str, dict]:
    """Write the matrices, heatmaps and ``tuned_generation.yaml``; return the best setting per category, among the
    points scored like the category's newest one, or like the point in folder ``like`` for its category
    (``comparable_points``).

    With a logger that has ``log_table`` (W&B), each matrix (of the categories ``logged``, where given) also goes
    there as a table and its heatmap as an image.
    """
    artifacts.require_directory_name("dataset", dataset)
    artifacts.require_directory_name("variant", variant)
    missing = UserError(f"no finished sweep jobs under {Path(root, dataset)}/*/{variant}/{SWEEP_PREFIX}*")
    if not Path(root, dataset).is_dir():
        raise missing
    out = sweep_folder(root, dataset, variant)
    # the pipelines of categories run side by side aggregate as each one's sweep ends: taking turns, each reads the
    # points finished before it writes, so the last to write has every point any of them read
    with atomic_files.made_once(Path(root, dataset, f".sweeps-{variant}")):
        rows = collect_sweep(root, dataset, variant, metric)
        if not rows:
            raise missing
        best = _aggregated(rows, out, dataset, metric, logger, like, logged)
    points = "; ".join(f"{c} s={b['strength']:g} ω={b['guidance_scale']:g} ({b[metric]:.4g})" for c, b in best.items())
    log.info("sweep of %s/%s: lowest %s: %s; written to %s", dataset, variant, metric, points, out / TUNED_FILE)
    return best


def _aggregated(rows: list[dict[str, Any]], out: Path, dataset: str, metric: str, logger: Any,
                like: str | Path | None, logged: Collection[str] | None) -> dict[str, dict]:
    """``aggregate_sweep``'s files in ``out`` from the sweep points ``rows``; the best setting per category."""
    best: dict[str, dict] = {}
    for category in sorted({r["category"] for r in rows}, key=str.casefold):  # NEU's Pa before PS, as listings are
        mine = comparable_points([r for r in rows if r["category"] == category], like)
        strengths = sorted({r["strength"] for r in mine})
        guidances = sorted({r["guidance_scale"] for r in mine})
        matrix = np.full((len(strengths), len(guidances)), np.nan)
        for r in mine:
            matrix[strengths.index(r["strength"]), guidances.index(r["guidance_scale"])] = r[metric]
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["strength \\ guidance_scale", *guidances])
        writer.writerows([[s, *["" if np.isnan(v) else v for v in row]] for s, row in zip(strengths, matrix)])
        atomic_files.write_bytes_atomic(out / f"{metric}_{category}.csv", text.getvalue().encode("utf-8"))
        atomic_files.write_bytes_atomic(out / f"{metric}_{category}.md", _markdown(matrix, strengths, guidances, metric).encode())
        heatmap_png(matrix, [f"{s:g}" for s in strengths], [f"{g:g}" for g in guidances], out / f"{metric}_{category}.png",
                    xlabel="guidance scale ω", ylabel="strength s", fmt="{:.2f}", title=f"{dataset} {category}: {metric}",
                    cmap="viridis_r")
        if hasattr(logger, "log_table") and (logged is None or category in logged):
            logger.log_table(key=f"sweep/{metric}_{category}", columns=["strength \\ guidance_scale", *map(str, guidances)],
                             data=[[s, *[None if np.isnan(v) else float(v) for v in row]] for s, row in zip(strengths, matrix)])
            logger.log_image(key=f"sweep/{metric}_{category}_heatmap", images=[str(out / f"{metric}_{category}.png")])
        winner = min(mine, key=lambda r: r[metric])
        best[category] = {"strength": winner["strength"], "guidance_scale": winner["guidance_scale"], metric: winner[metric]}
    atomic_files.write_bytes_atomic(out / TUNED_FILE, yaml.safe_dump(best, sort_keys=False).encode("utf-8"))
    return best


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra < 1.3
    _HydraCallback = object


class AggregateSweep(_HydraCallback):
    """Hydra callback: aggregate the sweep when the multirun ends (``hydra.callbacks`` in a sweep config)."""

    def __init__(self, metric: str = "fid"):
        self.metric = metric

    def on_multirun_end(self, config, **kwargs) -> None:
        from stablesdg.logger_run import end_logger_run
        from stablesdg.loggers import build_logger

        # named after the folder it writes, <dataset>/sweeps/<variant>, not after one of the multirun's jobs
        logger = build_logger(config, name=f"{config.dataset.name}-sweeps-{config.variant}")
        try:
            aggregate_sweep(config.paths.artifacts, config.dataset.name, config.variant, self.metric, logger)
        except UserError as err:
            log.warning("sweep aggregation skipped: %s", err)
        finally:
            if logger is not None:
                logger.finalize("success")
                end_logger_run()
