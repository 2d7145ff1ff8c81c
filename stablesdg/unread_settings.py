"""Settings a command sets that its stage, as configured, never reads, each found in the command's overrides and said
with why: the run would go on as if they were not there. Importable without torch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from stablesdg.choices import TRAINED_STAGES
from stablesdg.errors import is_number

# stage=classify's settings of its generated images that each stage.mode leaves unread: none trains on real images
# only; substitute tops each class up to its full real count, whatever stage.extra_per_class says
UNREAD_BY_MODE = {"none": ("stage.generated", "stage.extra_per_class"), "substitute": ("stage.extra_per_class",)}
# the FID/KID settings (conf/_stage_scoring.yaml) that stage=generate reads only where it scores its set
SCORING_SETTINGS = ("stage.features", "stage.inception_weights", "stage.feature_seed", "stage.real_split")
# stage=full's settings of prior preservation: those that make class images (stage.prior_images=auto), and the rest
MAKING_PRIOR_IMAGES = ("stage.num_prior_images", "stage.prior_steps")
PRIOR_SETTINGS = (*MAKING_PRIOR_IMAGES, "stage.prior_prompt", "stage.prior_loss_weight")
# Lightning's settings of its validation and test loops, which only stage=classify has
LOOP_TRAINER_SETTINGS = ("trainer.limit_val_batches", "trainer.val_check_interval", "trainer.check_val_every_n_epoch",
                         "trainer.limit_test_batches", "trainer.limit_predict_batches")
# the trainer settings a stage that trains nothing reads: where it computes, in which precision, on how many devices
DEVICE_TRAINER_SETTINGS = ("trainer.accelerator", "trainer.precision", "trainer.devices", "trainer.num_nodes",
                           "trainer.strategy")


def unread_pipeline_settings(overrides: Sequence[str], stage: DictConfig) -> list[str]:
    """The overrides of ``pipeline.`` settings in a command that runs ``stage``, another stage than
    ``stage=pipeline``, which alone reads them (``stage=ti pipeline.adapt_steps=10`` trains the stage's own steps)."""
    if stage.name == "pipeline":
        return []
    return _overrides_setting(overrides, lambda key: key.startswith("pipeline."))


def _never(key: str) -> bool:
    return False


def _composition_unread(stage: Mapping) -> Callable[[str], bool]:
    unread = UNREAD_BY_MODE.get(str(stage.get("mode")), ()) if stage.get("name") == "classify" else ()
    return lambda key: key in unread


def _scoring_unread(stage: Mapping) -> Callable[[str], bool]:
    if stage.get("name") != "generate" or stage.get("score"):
        return _never
    return lambda key: key in SCORING_SETTINGS


def _prior_unread(stage: Mapping) -> Callable[[str], bool]:
    if stage.get("name") != "full" or stage.get("prior_images") == "auto":
        return _never
    unread = MAKING_PRIOR_IMAGES if stage.get("prior_images") else PRIOR_SETTINGS
    return lambda key: key in unread


def _placeholder_unread(stage: Mapping) -> Callable[[str], bool]:
    if stage.get("name") not in ("lora", "full") or not stage.get("use_ti"):
        return _never
    return lambda key: key == "stage.placeholder"


def _tuned_unread(stage: Mapping) -> Callable[[str], bool]:
    if stage.get("name") != "generate" or stage.get("strength") is None or stage.get("guidance_scale") is None:
        return _never
    return lambda key: key == "stage.tuned"


def _guidance_unread(stage: Mapping) -> Callable[[str], bool]:
    guidance = stage.get("guidance_scale")
    if stage.get("name") != "generate" or not is_number(guidance) or float(guidance) > 1:
        return _never
    return lambda key: key == "stage.negative_prompt"  # diffusers guides by it only above 1


def _sampling_unread(stage: Mapping) -> Callable[[str], bool]:
    if stage.get("name") != "sample" or stage.get("generator") != "dcgan":
        return _never
    return lambda key: key == "stage.num_inference_steps"


def _trainer_unread(stage: Mapping) -> Callable[[str], bool]:
    if stage.get("name") in ("classify", "pipeline"):
        return _never
    if stage.get("name") in TRAINED_STAGES:
        return lambda key: key in LOOP_TRAINER_SETTINGS
    return lambda key: key.startswith("trainer.") and key not in DEVICE_TRAINER_SETTINGS


_UNREAD_RULES = (_composition_unread, _scoring_unread, _prior_unread, _placeholder_unread, _tuned_unread,
                 _guidance_unread, _sampling_unread, _trainer_unread)


def left_unread(key: str, stage: Mapping) -> bool:
    """Whether a run of the stage whose settings are ``stage`` leaves the setting at the dotted ``key`` unread, as the
    notes below say of a command's overrides (the pipeline's settings aside): the run goes as if it were not there."""
    return any(rule(stage)(key) for rule in _UNREAD_RULES)


def unread_composition_settings(overrides: Sequence[str], stage: DictConfig) -> list[str]:
    """The overrides of a ``stage=classify`` command that its ``stage.mode`` leaves unread (``UNREAD_BY_MODE``), so
    the classifier would not train on the generated images, or the number of them, they name."""
    return _overrides_setting(overrides, _composition_unread(stage))


def unread_scoring_settings(overrides: Sequence[str], stage: DictConfig) -> list[str]:
    """The overrides of ``SCORING_SETTINGS`` in a ``stage=generate`` command that does not score its set
    (``stage.score=false``), which leaves them unread: no FID comes of them."""
    return _overrides_setting(overrides, _scoring_unread(stage))


def unread_prior_settings(overrides: Sequence[str], stage: DictConfig) -> list[str]:
    """The overrides of ``stage=full``'s prior-preservation settings that its ``stage.prior_images`` leaves unread:
    all of ``PRIOR_SETTINGS`` without prior preservation (null), those ``MAKING_PRIOR_IMAGES`` with a folder of
    class images."""
    return _overrides_setting(overrides, _prior_unread(stage))


def unread_placeholder_settings(overrides: Sequence[str], stage: DictConfig) -> list[str]:
    """The override of ``stage.placeholder`` in a ``stage=lora`` or ``stage=full`` command that trains on the
    category's TI embedding (``stage.use_ti``), whose own placeholder the prompt then holds."""
    return _overrides_setting(overrides, _placeholder_unread(stage))


def unread_tuned_settings(overrides: Sequence[str], stage: DictConfig) -> list[str]:
    """The override of ``stage.tuned`` in a ``stage=generate`` command that sets both values a tuned file would give
    (``stage.strength`` and ``stage.guidance_scale``), which come first."""
    return _overrides_setting(overrides, _tuned_unread(stage))


def unread_sampling_settings(overrides: Sequence[str], stage: DictConfig) -> list[str]:
    """The override of ``stage.num_inference_steps`` in a ``stage=sample`` command that samples a DCGAN, which makes
    each image in one pass of its generator."""
    return _overrides_setting(overrides, _sampling_unread(stage))


def unread_trainer_settings(overrides: Sequence[str], stage: DictConfig) -> list[str]:
    """The overrides of ``trainer.`` settings that ``stage`` never hands to a Lightning loop that reads them: those of
    the validation and test loops (``LOOP_TRAINER_SETTINGS``) in a training stage other than ``stage=classify``, which
    alone validates and tests in Lightning's loops, and all but the ``DEVICE_TRAINER_SETTINGS`` in a stage that trains
    nothing (``stage=generate trainer.max_time=...``). ``stage=pipeline`` hands them to its training steps."""
    return _overrides_setting(overrides, _trainer_unread(stage))


def unread_setting_notes(overrides: Sequence[str], stage: DictConfig) -> list[str]:
    """One line for each kind of setting among the command's ``overrides`` that ``stage`` (its composed config)
    leaves unread, naming them and what would read them; none where every one is read."""
    notes = []
    pipeline = unread_pipeline_settings(overrides, stage)
    if pipeline:
        notes.append(f"{' '.join(pipeline)}: only stage=pipeline reads the pipeline's settings, and this command runs "
                     f"stage={stage.name}, which leaves them unread (its own: python -m stablesdg.train "
                     f"stage={stage.name} --cfg job --package stage)")
    composition = unread_composition_settings(overrides, stage)
    if composition and stage.mode == "none":
        notes.append(f"{' '.join(composition)}: stage.mode=none trains on real images only and leaves {_it(composition)} "
                     "unread; stage.mode=expand (or substitute) trains on the generated images too")
    elif composition:
        notes.append(f"{' '.join(composition)}: stage.mode=substitute tops each class up to its full real count with "
                     "generated images and leaves it unread; stage.mode=expand adds stage.extra_per_class generated "
                     "images to each class")
    scoring = unread_scoring_settings(overrides, stage)
    if scoring:
        notes.append(f"{' '.join(scoring)}: stage=generate scores its set only with stage.score=true, and leaves "
                     f"{_it(scoring)} unread; add stage.score=true, or score the finished set with stage=fid")
    prior = unread_prior_settings(overrides, stage)
    if prior and stage.get("prior_images"):
        notes.append(f"{' '.join(prior)}: stage.prior_images={stage.prior_images} gives the class images, so the "
                     f"settings that make them are unread (stage.prior_images=auto makes them)")
    elif prior:
        notes.append(f"{' '.join(prior)}: prior preservation is off (stage.prior_images is null), which leaves "
                     f"{_it(prior)} unread; stage.prior_images=auto makes class images, or give a folder of them")
    tuned = unread_tuned_settings(overrides, stage)
    if tuned:
        notes.append(f"{' '.join(tuned)}: stage.strength and stage.guidance_scale are both set, and come before a "
                     "tuned file's values, which leaves it unread; leave one out to read it from the file")
    sampling = unread_sampling_settings(overrides, stage)
    if sampling:
        notes.append(f"{' '.join(sampling)}: a DCGAN makes each image in one pass of its generator, which leaves it "
                     "unread; the denoising steps are stage.generator=ddpm's and ddim's")
    placeholder = unread_placeholder_settings(overrides, stage)
    if placeholder:
        notes.append(f"{' '.join(placeholder)}: stage={stage.name} trains on the category's TI embedding "
                     "(stage.use_ti=true), whose placeholder the prompt holds, and leaves it unread; the placeholder "
                     "is stage=ti's stage.placeholder (or stage.use_ti=false trains on this one as a plain word)")
    trainer = unread_trainer_settings(overrides, stage)
    if trainer and stage.name in TRAINED_STAGES:
        grids = (" (its validation grids come every stage.validation_every steps)"
                 if stage.name in ("ti", "lora", "full") else "")
        notes.append(f"{' '.join(trainer)}: stage={stage.name} trains for stage.max_steps steps with no validation or "
                     f"test loop{grids}, which leaves {_it(trainer)} unread; only stage=classify validates and tests")
    elif trainer:
        notes.append(f"{' '.join(trainer)}: stage={stage.name} trains nothing and reads only the trainer's device "
                     f"settings ({', '.join(DEVICE_TRAINER_SETTINGS[:3])}), which leaves {_it(trainer)} unread")
    return notes


def _it(words: list[str]) -> str:
    return "it" if len(words) == 1 else "them"


def _overrides_setting(overrides: Sequence[str], wanted: Callable[[str], bool]) -> list[str]:
    """The ``overrides`` (as written) whose key is ``wanted``."""
    return [override.input_line for override in OverridesParser.create().parse_overrides(list(overrides))
            if wanted(override.key_or_group)]
