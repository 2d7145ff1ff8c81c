"""Feature extractors for FID/KID, by name. Each maps float images ``B×C×H×W`` in [0, 1] (C = 1 or 3) to ``B×d``.

* ``inception``: the standard FID network (torch-fidelity's InceptionV3 through torchmetrics, 2048-d),
  weights read from ``weights`` or the torch hub cache; never downloaded by us.
* ``random_inception``: torchvision's InceptionV3 with seeded random weights (2048-d). Works offline;
  its scores compare generators against each other, not against published FIDs.
* ``pixels``: 16×16 grayscale thumbnails (256-d). Works offline; a cheap sanity check.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stablesdg.choices import require_extractor
from stablesdg.errors import UserError, first_line
from stablesdg.progress import progress_bar
from stablesdg.state_dicts import read_state_dict

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


def inception_weights_path(explicit: str | None) -> Path:
    """Where the standard FID InceptionV3 weights are: ``explicit``, else the torch hub cache; an error if absent."""
    path = Path(explicit).expanduser() if explicit else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not path.is_file():
        folder = " (a folder: name the file in it)" if path.is_dir() else ""
        raise UserError(
            f"the FID InceptionV3 weights are not at {path}{folder}; download {INCEPTION_FILE} from the torch-fidelity "
            "release (github.com/toshas/torch-fidelity/releases, tag v0.2.0) and set stage.inception_weights=<file> "
            "or put it in that folder; or use stage.features=random_inception (offline, relative scores only)"
        )
    return path


def _rgb(images: torch.Tensor) -> torch.Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class StandardInception(nn.Module):
    """torchmetrics' FID InceptionV3 (the torch-fidelity port of the TF network), 2048-d pool features."""

    num_features = 2048

    def __init__(self, weights: Path):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        # torch-fidelity unpickles the file with weights_only=False, which would run any code a pickle holds: it gets
        # the file only once the safe loader has read it as tensors alone (the same bytes then unpickle to the same)
        read_state_dict(weights, "stage.inception_weights")
        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                          feature_extractor_weights_path=str(weights))
        except RuntimeError as err:  # a state dict of another network: say what did not fit, in brief
            details = [line.strip() for line in str(err).splitlines()[1:] if line.strip()] or [first_line(err)]
            brief = "; ".join(d if len(d) <= 100 else d[:99] + "…" for d in details)
            raise UserError(f"stage.inception_weights={weights} is not the FID InceptionV3 ({INCEPTION_FILE}): "
                            f"{brief}") from err

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((_rgb(images) * 255).round().to(torch.uint8)).reshape(images.shape[0], -1)


class RandomInception(nn.Module):
    """InceptionV3 (torchvision) with seeded random weights; 2048-d features of 299 px inputs.

    Random weights alone let activations grow layer by layer, so the BatchNorm statistics are set
    once from a seeded batch of random images (the same for the same seed).
    """

    num_features = 2048

    def __init__(self, seed: int = 0, calibration_images: int = 8):
        super().__init__()
        import torchvision

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
            self.net.fc = nn.Identity()
            for module in self.net.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.reset_running_stats()
                    module.momentum = None  # cumulative average over the calibration batch
            calibration = F.interpolate(torch.rand(calibration_images, 3, 19, 19), size=(299, 299), mode="bilinear")
            self.net.train()
            with torch.no_grad():
                self.net((calibration - 0.5) / 0.5)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(_rgb(images), size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
        return self.net((x - 0.5) / 0.5)


class PixelThumbnails(nn.Module):
    """16×16 grayscale thumbnails as 256-d features."""

    num_features = 256

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        gray = images.mean(dim=1, keepdim=True)
        return F.adaptive_avg_pool2d(gray, 16).flatten(1)


def check_feature_weights(name: str, weights: str | None = None) -> None:
    """For ``inception``: its weights file found and read as tensors alone (a one-line ``UserError`` otherwise), so a
    run that scores only at its end (``stage=generate stage.score=true``) refuses a bad file at its start."""
    if name == "inception":
        read_state_dict(inception_weights_path(weights), "stage.inception_weights")


def build_feature_extractor(name: str, weights: str | None = None, seed: int = 0) -> nn.Module:
    """The extractor called ``name`` (see the module docstring), in eval mode."""
    require_extractor(name)
    if name == "inception":
        return StandardInception(inception_weights_path(weights)).eval()
    if name == "random_inception":
        return RandomInception(seed).eval()
    return PixelThumbnails().eval()


@torch.no_grad()
def extract_features(extractor: nn.Module, images, batch_size: int = 32, device: str | torch.device = "cpu",
                     desc: str | None = None, total: int | None = None) -> torch.Tensor:
    """Features of ``images`` (an iterable of ``C×H×W`` tensors in [0, 1], all the same size) as a float64 ``N×d`` on
    the CPU; with ``desc``, a progress bar of that name counts the images (of ``total``). The features stay on
    ``device`` until the last batch, so the host reads the next images while the device computes."""
    device = torch.device(device)
    extractor = extractor.to(device)
    rows, batch = [], []

    def extract() -> None:
        images = torch.stack(batch)
        if device.type == "cuda" and images.device.type == "cpu":  # from pinned memory the copy does not wait
            images = images.pin_memory()
        rows.append(extractor(images.to(device, non_blocking=True)))
        progress.update(len(batch))
        batch.clear()

    with progress_bar(desc=desc, total=total, unit="image", disable=desc is None) as progress:
        for image in images:
            batch.append(image)
            if len(batch) == batch_size:
                extract()
        if batch:
            extract()
    if not rows:
        return torch.empty(0, extractor.num_features, dtype=torch.float64)
    return torch.cat(rows).double().cpu()
