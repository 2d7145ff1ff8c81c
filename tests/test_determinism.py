"""One config and seed on a CPU give bit-identical artifacts from every stage (issue: reliability, item 5).

The whole chain of stages runs twice, into two artifact roots; every file of the two stores must be
byte-identical, except for the artifact root's own path inside text files and the run-specific fields
of ``result.json`` (wall time, the resolved paths).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import compose_config
from stablesdg.train import run

FEW_STEPS = ["stage.max_steps=3", "stage.validation_every=3", "stage.validation_images=2", "stage.validation_steps=2"]
SMALL_SET = ["stage.num_images=3", "stage.batch_size=2"]
SMALL_DDPM = ["stage.widths=[16,32]", "stage.layers_per_block=1", "stage.resolution=32", "stage.batch_size=4",
              "stage.max_steps=3"]


def _external_folder(root: Path) -> Path:
    """Two images per synthetic class, as another tool would deliver them."""
    rng = np.random.default_rng(0)
    for name in ("crazing", "patches", "pitted_surface", "scratches"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (48, 80), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _chain(external: Path) -> list[list[str]]:
    """Every stage, each as its command-line overrides, in an order in which each finds its inputs."""
    sc = ["category=Sc"]
    return [
        ["stage=inspect"],
        ["stage=ti", *sc, *FEW_STEPS],
        ["stage=lora", *sc, *FEW_STEPS],
        ["stage=generate", *sc, *SMALL_SET, "stage.num_inference_steps=4", "stage.strength=0.5",
         "stage.guidance_scale=3", "stage.score=true", "stage.features=pixels"],
        ["stage=fid", *sc, "stage.features=pixels"],
        ["stage=full", *sc, "variant=dreambooth", "stage.use_ti=false", "stage.prior_images=auto",
         "stage.num_prior_images=2", "stage.prior_steps=2", *FEW_STEPS],
        ["stage=generate", *sc, "variant=dreambooth", "stage.adapter=full", "stage.init=noise", *SMALL_SET,
         "stage.num_inference_steps=2", "stage.guidance_scale=3"],
        ["stage=dcgan", *sc, "variant=dcgan", "stage.max_steps=3", "stage.width=8", "stage.batch_size=4"],
        ["stage=sample", *sc, "variant=dcgan", "stage.generator=dcgan", *SMALL_SET],
        ["stage=ddpm", *sc, "variant=ddpm", *SMALL_DDPM],
        ["stage=sample", *sc, "variant=ddpm", "stage.generator=ddpm", "stage.num_inference_steps=3", *SMALL_SET],
        ["stage=sample", *sc, "variant=ddim", "stage.model_variant=ddpm", "stage.generator=ddim",
         "stage.num_inference_steps=3", *SMALL_SET],
        ["stage=external", *sc, "variant=stylegan3", f"stage.source={external}"],
        ["stage=classify", "stage.max_epochs=2", "stage.alpha=0.4", "stage.mode=expand", f"stage.generated={external}",
         "stage.extra_per_class=2"],
    ]


def _run_chain(root: Path, external: Path) -> Path:
    store = root / "artifacts"
    for overrides in _chain(external):
        run(compose_config([f"paths.artifacts={store}", f"paths.logs={root}/logs", "logger=none", "model.resolution=32",
                            *overrides]))
    return store


def _comparable(path: Path, root: Path) -> bytes | dict:
    """A file's bytes, with the artifact root's path written as ``<root>``; of ``result.json``, what a seed decides."""
    data = path.read_bytes()
    if path.suffix not in {".json", ".csv", ".txt", ".yaml"}:
        return data
    data = data.replace(str(root).encode(), b"<root>")
    if path.name != "result.json":
        return data
    record = json.loads(data)
    return {key: record[key] for key in ("stage", "dataset", "category", "variant", "metrics", "config")}


@pytest.mark.slow
def test_every_stage_gives_bit_identical_artifacts_for_one_seed(tmp_path, capsys):
    external = _external_folder(tmp_path / "external")
    stores = [_run_chain(tmp_path / name, external) for name in ("first", "second")]
    # no library's progress bar ("Loading weights", "Writing model shards") writes carriage returns into a log
    assert "\r" not in capsys.readouterr().err
    files = [sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file()) for store in stores]
    assert files[0] == files[1], "both runs write the same files"
    stages = {p.parent.name for p in files[0] if p.name == "result.json"}
    assert {"inspect", "ti", "lora", "full", "generate", "fid", "dcgan", "ddpm",
            "classify_squeezenet_a0.4_expand_seed0"} <= stages
    assert len([p for p in files[0] if p.name == "result.json"]) == len(_chain(external)), "every stage finished"
    assert any(p.suffix == ".png" for p in files[0]) and any(p.suffix == ".safetensors" for p in files[0])
    different = [str(p) for p in files[0]
                 if _comparable(stores[0] / p, stores[0].parent) != _comparable(stores[1] / p, stores[1].parent)]
    assert not different, f"files that differ between two runs of one config: {different}"
