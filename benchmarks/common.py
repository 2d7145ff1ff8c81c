"""What every benchmark shares: composing the repo's config, timing, the device line and the output table."""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import logging
import platform
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode

from stablesdg import provenance
from stablesdg.choices import COMPILE_MODES
from stablesdg.models.components import DropRecordsContaining
from stablesdg.training_output import quiet_trainer_notices

REPO = Path(__file__).resolve().parent.parent


def compose(overrides: list[str]):
    """The repository's config with ``overrides``, exactly as ``python -m stablesdg.train`` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from stablesdg.schema import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def count_argument(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``minimum``, else argparse's one-line usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value
    return parse


def override_argument(text: str) -> str:
    """An argparse ``type``: a config override in Hydra's ``KEY=VALUE`` form."""
    if "=" not in text.lstrip("+~"):
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. model.resolution=256)")
    return text


def device_argument(text: str) -> str:
    """An argparse ``type``: a torch device this machine has (``cuda`` only where a CUDA GPU is visible)."""
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: this machine shows no CUDA GPU; use --device cpu")
    return text


def arguments(description: str, composes_config: bool = True, profiles: bool = False,
              own_options: Callable[[argparse.ArgumentParser], None] | None = None,
              **defaults: Any) -> argparse.Namespace:
    """The options every benchmark takes: model, device, steps (timed), warm-up steps, batch, output JSON;
    ``--set`` config overrides where the benchmark runs our stages (``composes_config``); ``--profile`` where it
    can write profiler tables (``profiles``); and whatever ``own_options`` adds to the parser."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=defaults.get("model", "tiny"), choices=["tiny", "sd15_random"],
                        help="tiny (CPU) or sd15_random (GPU, 512 px)")
    parser.add_argument("--device", type=device_argument, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=count_argument(1), default=defaults.get("steps", 10), help="timed iterations")
    parser.add_argument("--warmup", type=count_argument(0), default=defaults.get("warmup", 2),
                        help="untimed iterations first")
    parser.add_argument("--batch", type=count_argument(1), default=defaults.get("batch", 4))
    parser.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    parser.add_argument("--workdir", default="/tmp/stablesdg-benchmarks", help="scratch artifact store")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 TFLOP/s for '%% of peak' (default: known GPUs by name)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile of the UNet (slow to compile)")
    if composes_config:
        parser.add_argument("--compile-mode", default="default",
                            choices=COMPILE_MODES,
                            help="torch.compile's mode in the compile rows (model.compile=MODE; reduce-overhead: CUDA graphs)")
        parser.add_argument("--only-compile", action="store_true",
                            help="measure only the torch.compile rows (and what they are compared with)")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides", type=override_argument,
                            help="a config override for every measured run, as on the command line (repeatable), "
                                 "e.g. --set model.resolution=256")
    if profiles:
        parser.add_argument("--profile", default=None, metavar="DIR",
                            help="also profile one step after the timed ones, of each run, into DIR/<run>.txt "
                                 "(torch.profiler: the operators by time, and CPU against device time)")
    parser.add_argument("--fid-features", default="random_inception", choices=["random_inception", "inception", "pixels"],
                        help="feature extractor of generation.py's 'FID vs real' column (pixels: seconds, for smoke runs)")
    if own_options:
        own_options(parser)
    args = parser.parse_args()
    quiet_notices()
    return args


# Notices the libraries print at every run that say nothing about a measurement: (logger, text in the message).
NOTICES_WITHOUT_NEWS = [
    # diffusers 0.42 warns at every dtype cast, also when the list of modules to keep in fp32 is empty (SD1.5's)
    ("diffusers.models.modeling_utils", "should be kept in float32: []"),
    # the reference loops resize the token table as diffusers' scripts do, and transformers explains its default
    ("transformers.modeling_utils", "mean_resizing=False"),
]


def quiet_notices() -> None:
    """From now on, drop Lightning's notices as ``python -m stablesdg.train`` does, and ``NOTICES_WITHOUT_NEWS``;
    every other record and warning still shows."""
    quiet_trainer_notices()
    for logger_name, text in NOTICES_WITHOUT_NEWS:
        logging.getLogger(logger_name).addFilter(DropRecordsContaining(text))


# Dense bf16 matrix rate in TFLOP/s of GPUs we may be lent (vendor datasheets); --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "V100": 125.0}


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter_mode() -> flop_counter.FlopCounterMode:
    """torch's ``FlopCounterMode`` (matrix multiplications, convolutions and attention: nearly all of a diffusion
    model's work), counting attention on a CPU too: torch counts the GPU's attention kernels, but not the CPU's
    (``_scaled_dot_product_flash_attention_for_cpu``), which it would leave out of a CPU's count."""
    aten = torch.ops.aten
    return flop_counter.FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops})


def counted_flops(function: Callable[[], Any]) -> int:
    """Floating-point operations ``function()`` performs, counted by ``flop_counter_mode``."""
    with flop_counter_mode() as counter:
        function()
    return int(counter.get_total_flops())


class OperatorCounter(TorchDispatchMode):
    """Counts the aten operators dispatched inside (forward and backward), views excepted. In eager mode on a GPU
    each is about one kernel launch with its host-side cost, so where a step waits on the host this count sets its
    pace; it is the same on every device, so a CPU run shows what a change does to it. (Compiled code launches its
    fused kernels without dispatching aten operators, so the count means nothing there.)"""

    def __init__(self):
        super().__init__()
        self.operators = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.operators += not func.is_view
        return func(*args, **(kwargs or {}))


class DeviceSyncs:
    """Counts the host synchronisations with a CUDA device inside: ``.item()``, blocking copies, ``nonzero`` and the
    like, each of which makes the host wait for the GPU (torch's sync debug mode warns at each). ``count`` stays None
    on other devices, where nothing waits. ``sites`` names the Python line that made each (``file:line``, the path
    from ``site-packages/`` on, with `` ×n`` where one line made several), most first."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.count: int | None = None
        self.sites: list[str] = []

    def __enter__(self) -> "DeviceSyncs":
        if self.cuda:
            self._recording = warnings.catch_warnings(record=True)
            self._caught = self._recording.__enter__()
            warnings.simplefilter("always")
            self._previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode(self._previous)
            self._recording.__exit__(*exc)
            syncs = [w for w in self._caught if "synchronizing CUDA operation" in str(w.message)]
            self.count = len(syncs)
            where = collections.Counter(f"{w.filename.split('site-packages/')[-1]}:{w.lineno}" for w in syncs)
            self.sites = [site if n == 1 else f"{site} ×{n}" for site, n in where.most_common()]


def operators_and_syncs(function: Callable[[], Any], device: str) -> tuple[int, DeviceSyncs]:
    """One more call of ``function``: its aten operators (``OperatorCounter``) and its host synchronisations
    (``DeviceSyncs``: counted on a GPU only)."""
    with OperatorCounter() as operators, DeviceSyncs(device) as syncs:
        function()
    return operators.operators, syncs


def compile_option(args: argparse.Namespace) -> tuple[str, tuple[str, ...]]:
    """The compile rows' label suffix and config overrides: torch.compile in ``--compile-mode``, with channels_last
    unless ``--set model.channels_last=false`` turns it off."""
    mode = "" if args.compile_mode == "default" else f" ({args.compile_mode})"
    setting = "true" if args.compile_mode == "default" else args.compile_mode
    if "model.channels_last=false" in args.overrides:
        return f" + compile{mode}", (f"model.compile={setting}",)
    return f" + channels_last + compile{mode}", ("model.channels_last=true", f"model.compile={setting}")


def peak_tflops(args: argparse.Namespace) -> float | None:
    """The device's dense bf16 rate: ``--peak-tflops``, else looked up by GPU name (None on a CPU or unknown GPU)."""
    if args.peak_tflops:
        return args.peak_tflops
    if not args.device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(args.device))
    return next((rate for key, rate in PEAK_BF16_TFLOPS.items() if key in name), None)


def achieved(args: argparse.Namespace, flops_per_second: float) -> dict[str, float | None]:
    """``achieved TFLOP/s`` and, where the device's peak is known, ``% of peak``."""
    tflops = flops_per_second / 1e12
    peak = peak_tflops(args)
    return {"achieved TFLOP/s": tflops, "% of peak": 100 * tflops / peak if peak else None}


def device_line(device: str) -> str:
    """The device in words: the GPU's name, or the CPU's model, the instruction set of torch's CPU kernels and the
    thread count (``provenance.machine``)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    machine = provenance.machine()
    return f"CPU {machine['cpu']} ({platform.machine()}, {machine['cpu_capability']}), {machine['cpu_threads']} threads"


def trainer_override(device: str) -> str:
    """The ``trainer=`` config for ``device``: ``gpu`` (bf16) on CUDA, else ``cpu``."""
    return "trainer=gpu" if device.startswith("cuda") else "trainer=cpu"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(function: Callable[[], Any], device: str, repeats: int, warmup: int) -> float:
    """Seconds per call of ``function`` after ``warmup`` untimed calls (device work included)."""
    for _ in range(warmup):
        function()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


@contextmanager
def profiled(path: Path, device: str) -> Iterator[None]:
    """Profile the work done inside (device work waited for at the end) and write ``torch.profiler``'s operator
    table to ``path``, sorted by device time on a GPU, by CPU time on a CPU. Its last lines give the total CPU and
    device time: a step whose CPU time exceeds its device time waits on the host, not on arithmetic."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as profiler:
        yield
        synchronize(device)
    table = profiler.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                          row_limit=30)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n")


def peak_memory_gib(device: str) -> float | None:
    """Peak allocated GPU memory since the last reset, in GiB (None on a CPU)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return None


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def announce(row: dict[str, Any]) -> None:
    """Print one measured row at once (as JSON), so a run stopped part-way still shows what it measured."""
    print("measured:", json.dumps(row), flush=True)


def report(name: str, args: argparse.Namespace, rows: list[dict[str, Any]], columns: list[str]) -> dict[str, Any]:
    """Print ``rows`` as a Markdown table and write them (with the device and date) to ``args.out``."""
    record = {"benchmark": name, "device": device_line(args.device), "model": args.model,
              "date": datetime.date.today().isoformat(), "torch": torch.__version__,
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")}, "rows": rows}
    print(f"{name} on {record['device']}, model={args.model}, {record['date']}")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
