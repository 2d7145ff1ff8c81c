"""FID/KID throughput (feature extraction images/s per extractor, also from JPEG files decoded as ``stage=fid`` does,
with its host syncs, and the FID/KID computation) and the
classifiers' training throughput: images/s of one training step of each network at 200 px as ``stage=classify``
runs it (the loaded uint8 grey batch made float RGB, augmentation, normalisation, network, loss, Adam), and of the
augmentation alone, ours (kornia, the whole batch) against torchvision's transforms one image at a time; with
operators and (on a GPU) host syncs per step;
and of ``stage=classify``'s training loader over 200 px grey JPEG files (as NEU's), decoding every epoch
(``stage.preload=false``) against images decoded once into memory (``stage.preload=true``).

    python benchmarks/scoring_and_classifiers.py                             # CPU
    python benchmarks/scoring_and_classifiers.py --networks resnet densenet  # only these classifiers' rows
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import announce, arguments, operators_and_syncs, report, timed  # noqa: E402

from stablesdg.classify.networks import build_classifier  # noqa: E402
from stablesdg.evaluation.features import build_feature_extractor, extract_features  # noqa: E402
from stablesdg.evaluation.fid import fid_kid  # noqa: E402
from stablesdg.stages.classify import augmentation, normalization  # noqa: E402

NETWORKS = {"alexnet": None, "vgg": 16, "resnet": 18, "squeezenet": None, "densenet": 121}


def network_options(parser) -> None:
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS),
                        help="the classifiers whose training step is measured (default: all)")


def main() -> dict:
    args = arguments(__doc__.splitlines()[0], composes_config=False, own_options=network_options, steps=2, warmup=1,
                     batch=8)
    device = torch.device(args.device)
    images = torch.rand(args.batch, 1, 200, 200)
    rows = []
    for name in ("pixels", "random_inception"):
        extractor = build_feature_extractor(name, None, 0).to(device)
        seconds = timed(lambda: extract_features(extractor, iter(images), batch_size=args.batch, device=device),
                        args.device, args.steps, args.warmup)
        rows.append({"work": f"features: {name}", "images/s": args.batch / seconds})
        announce(rows[-1])
    rows.append(features_from_files(args, jpeg_records(args, Path(args.workdir) / "loader")))
    announce(rows[-1])
    real, fake = torch.randn(256, 2048, dtype=torch.float64), torch.randn(200, 2048, dtype=torch.float64)
    seconds = timed(lambda: fid_kid(real, fake, seed=0), "cpu", 1, 0)
    rows.append({"work": "FID + KID of 200 vs 256 2048-d features", "images/s": 200 / seconds})
    announce(rows[-1])
    torchvision = v2.Compose([v2.RandomRotation(10), v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()])
    augment = augmentation().to(device)
    batch = torch.rand(args.batch, 3, 200, 200, device=device)
    for work, function in (("augment: torchvision, one image at a time (before)",
                            lambda: torch.stack([torchvision(image) for image in batch])),
                           ("augment: kornia, the whole batch (stage=classify)", lambda: augment(batch))):
        rows.append({"work": work, "images/s": args.batch / timed(function, args.device, args.steps, args.warmup),
                     **counted(function, args.device)})
        announce(rows[-1])
    rows += loader_rows(args, Path(args.workdir) / "loader")
    normalize = normalization(False).to(device)
    loaded = torch.randint(0, 256, (args.batch, 1, 200, 200), dtype=torch.uint8, device=device)  # as stage.preload
    for arch, depth in NETWORKS.items():  # in the table's order, whatever the order of --networks
        if arch not in args.networks:
            continue
        network = build_classifier(arch, 6, depth, None).to(device).train()
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-4, fused=True)  # as stage=classify
        labels = torch.randint(0, 6, (args.batch,), device=device)

        def step():  # as DefectClassifier's on_after_batch_transfer and training_step, bf16 autocast as trainer=gpu
            optimizer.zero_grad()
            images = TF.grayscale_to_rgb(TF.to_dtype(loaded, torch.float32, scale=True))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                with torch.autocast(device.type, enabled=False):
                    augmented = augment(images)
                loss = F.cross_entropy(network(normalize(augmented)), labels)
            loss.backward()
            optimizer.step()

        rows.append({"work": f"train {arch}", "images/s": args.batch / timed(step, args.device, args.steps, args.warmup),
                     **counted(step, args.device)})
        announce(rows[-1])
    return report("scoring and classifier throughput", args, rows,
                  ["work", "images/s", "operators per step", "host syncs per step", "bytes to the device per image"])


def loader_rows(args, folder: Path) -> list[dict]:
    """Images/s of an epoch of ``stage=classify``'s training loader (batch ``args.batch``, as ``image_sets`` builds
    its dataset) over ``8 × args.batch`` grey 200 px JPEG files, and the bytes each image moves to the device."""
    from stablesdg.data import DefectImageDataset
    from stablesdg.data.preload import preload_images
    from stablesdg.data.sources import PathSource

    records = jpeg_records(args, folder)
    every_epoch = DefectImageDataset(records, PathSource(), 1, 200)
    seconds_to_preload = timed(lambda: preload_images([every_epoch], "decoding"), "cpu", 1, 0)
    datasets = {"load: decode every epoch (stage.preload=false)": every_epoch,
                "load: decoded once into memory (stage.preload=true)": preload_images([every_epoch], "decoding")}
    rows = []
    for work, dataset in datasets.items():
        loader = DataLoader(dataset, batch_size=args.batch, shuffle=True)
        seconds = timed(lambda: [batch for batch in loader], "cpu", args.steps, args.warmup)  # noqa: B023
        images, _ = next(iter(loader))
        rows.append({"work": work, "images/s": len(records) / seconds,
                     "bytes to the device per image": images[0].numel() * images.element_size()})
        announce(rows[-1])
    rows.append({"work": "load: decoding once, before the first epoch (stage.preload=true)",
                 "images/s": len(records) / seconds_to_preload})
    announce(rows[-1])
    return rows


def jpeg_records(args, folder: Path) -> list:
    """``8 × args.batch`` grey 200 px JPEG files (as NEU's) in ``folder``, made once, as dataset records."""
    from stablesdg.data.sources import ImageRecord
    from stablesdg.data.synthetic import render_synthetic_defect

    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(8 * args.batch):
        path = folder / f"{index:05d}.jpg"
        if not path.exists():
            render_synthetic_defect("Pa", index, 200, seed=0).save(path, quality=95)
        records.append(ImageRecord(str(path), 0, ""))
    return records


def features_from_files(args, records: list) -> dict:
    """Random-Inception features of the images of ``records`` as ``stage=fid`` extracts them: each decoded on the host
    while the device computes the batch before (batch ``args.batch``), with the host syncs of one extraction."""
    from stablesdg.data import DefectImageDataset
    from stablesdg.data.sources import PathSource

    dataset = DefectImageDataset(records, PathSource(), 1, 200)
    extractor = build_feature_extractor("random_inception", None, 0).to(args.device)

    def extract():
        return extract_features(extractor, (dataset[i][0] for i in range(len(dataset))), batch_size=args.batch,
                                device=args.device)

    seconds = timed(extract, args.device, args.steps, args.warmup)
    return {"work": f"features: random_inception, {len(records)} JPEG files decoded as stage=fid does",
            "images/s": len(records) / seconds, **counted(extract, args.device)}


def counted(function, device: str) -> dict:
    """The operators and (on a GPU) host syncs of one more call of ``function``, as table columns, and the lines the
    syncs came from (``DeviceSyncs.sites``)."""
    operators, syncs = operators_and_syncs(function, device)
    return {"operators per step": operators, "host syncs per step": syncs.count, "host sync sites": syncs.sites}


if __name__ == "__main__":
    main()
