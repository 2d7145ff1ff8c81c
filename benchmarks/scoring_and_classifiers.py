"""FID/KID throughput (feature extraction images/s per extractor, and the FID/KID computation) and the
classifiers' training throughput: images/s of one training step of each network at 200 px as ``stage=classify``
runs it (augmentation, normalisation, network, loss, Adam), and of the augmentation alone, ours (kornia, the whole
batch) against torchvision's transforms one image at a time; with operators and (on a GPU) host syncs per step.

    python benchmarks/scoring_and_classifiers.py            # CPU
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import announce, arguments, operators_and_syncs, report, timed  # noqa: E402

from stablesdg.classify.networks import build_classifier  # noqa: E402
from stablesdg.evaluation.features import build_feature_extractor, extract_features  # noqa: E402
from stablesdg.evaluation.fid import fid_kid  # noqa: E402
from stablesdg.stages.classify import augmentation, normalization  # noqa: E402

NETWORKS = {"alexnet": 0, "vgg": 16, "resnet": 18, "squeezenet": 0, "densenet": 121}


def main() -> dict:
    args = arguments(__doc__.splitlines()[0], composes_config=False, steps=2, warmup=1, batch=8)
    device = torch.device(args.device)
    images = torch.rand(args.batch, 1, 200, 200)
    rows = []
    for name in ("pixels", "random_inception"):
        extractor = build_feature_extractor(name, None, 0).to(device)
        seconds = timed(lambda: extract_features(extractor, iter(images), batch_size=args.batch, device=device),
                        args.device, args.steps, args.warmup)
        rows.append({"work": f"features: {name}", "images/s": args.batch / seconds})
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
    normalize = normalization(False).to(device)
    for arch, depth in NETWORKS.items():
        network = build_classifier(arch, 6, depth, None).to(device).train()
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-4, fused=True)  # as stage=classify
        labels = torch.randint(0, 6, (args.batch,), device=device)

        def step():  # as DefectClassifier.training_step, in bf16 autocast on a GPU as with trainer=gpu
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                with torch.autocast(device.type, enabled=False):
                    augmented = augment(batch)
                loss = F.cross_entropy(network(normalize(augmented)), labels)
            loss.backward()
            optimizer.step()

        rows.append({"work": f"train {arch}", "images/s": args.batch / timed(step, args.device, args.steps, args.warmup),
                     **counted(step, args.device)})
        announce(rows[-1])
    return report("scoring and classifier throughput", args, rows,
                  ["work", "images/s", "operators per step", "host syncs per step"])


def counted(function, device: str) -> dict:
    """The operators and (on a GPU) host syncs of one more call of ``function``, as table columns."""
    return dict(zip(("operators per step", "host syncs per step"), operators_and_syncs(function, device)))


if __name__ == "__main__":
    main()
