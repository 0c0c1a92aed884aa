"""Frozen, validated configuration for every part of the model, and for a training run.

Each dataclass checks itself in ``__post_init__`` and raises ``ValueError`` naming the field, the
value and what is allowed. JSON lives only at the edge: :func:`to_dict` / :func:`from_dict`
round-trip a config and reject unknown keys, so a typo in a config file is an error, not a
silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

# the largest seed: seeds are int64 (torch generators, the server's parameters)
MAX_SEED = 2**63 - 1
# bounds on sizes that a config file sets: beyond them a model needs more memory and time than
# any machine here has, and fails late (an OpenCV or allocator error) instead of at once
MAX_IMAGE_SIZE = 4096  # S
MAX_DEPTH = 32  # residual blocks per level (num_res_blocks, encoder/context/cond depths)
MAX_WIDTH = 4096  # channels of one layer

T = TypeVar("T")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_channels(name: str, channels: tuple[int, ...], groups: int) -> None:
    _check(len(channels) >= 1, f"{name}={channels} must list at least one width")
    for c in channels:
        _check(
            c > 0 and c % groups == 0,
            f"{name}={channels}: every width must be a positive multiple of groups={groups}",
        )
        _check(c <= MAX_WIDTH, f"{name}={channels}: every width must be at most {MAX_WIDTH}")


def _check_depth(name: str, value: int) -> None:
    _check(1 <= value <= MAX_DEPTH, f"{name}={value} must be between 1 and {MAX_DEPTH}")


@dataclass(frozen=True)
class ImageAEConfig:
    """Image autoencoder E_x / D_x: RGB (3, S, S) -> z_x (latent_channels, S/f, S/f)."""

    factor: int = 8  # spatial down-sampling f; 4 or 8
    latent_channels: int = 16  # c_x, channels of the image latent fed to the denoiser
    channels: tuple[int, ...] = (32, 64, 128)  # widths at S/2, S/4, S/8 (len = log2(f))
    encoder_depth: int = 1  # residual blocks per encoder level below the stem (S/4 ... S/f)
    context_channels: tuple[int, ...] = (192, 256)  # context branch widths at S/2f, S/4f, ...
    context_depth: int = 1  # residual blocks per context level (see vae._Context)
    groups: int = 8  # GroupNorm groups
    decoder: bool = True  # build D_x; only stage 1 needs it, so inference bundles drop it
    backbone: str = ""  # "" or "mobilenet_v2": pretrained features fed into the context branch
    # "lsdseg": the from-scratch encoder above (channels, context_*, backbone); or a pretrained
    # EfficientNet-Lite with a feature-pyramid decoder as the whole encoder (lsdseg.efficientnet)
    encoder: Literal["lsdseg", "efficientnet_lite0", "efficientnet_lite2"] = "lsdseg"
    pyramid_width: int = 96  # pretrained encoders: width of the feature-pyramid decoder

    def __post_init__(self) -> None:
        _check(self.factor in (4, 8), f"factor={self.factor} must be 4 or 8")
        _check(self.latent_channels >= 1, f"latent_channels={self.latent_channels} must be >= 1")
        _check(self.groups >= 1, f"groups={self.groups} must be >= 1")
        _check_depth("encoder_depth", self.encoder_depth)
        _check_depth("context_depth", self.context_depth)
        _check_channels("channels", self.channels, self.groups)
        if self.context_channels:
            _check_channels("context_channels", self.context_channels, self.groups)
        levels = self.factor.bit_length() - 1
        _check(
            len(self.channels) == levels,
            f"channels={self.channels} needs {levels} widths for factor={self.factor}",
        )
        _check(
            self.backbone in ("", "mobilenet_v2"),
            f"backbone={self.backbone!r}: use '' (none) or 'mobilenet_v2'",
        )
        _check(
            not self.backbone or (self.factor == 8 and len(self.context_channels) >= 2),
            f"backbone={self.backbone!r} feeds S/8, S/16 and S/32: it needs factor=8 and two "
            "context levels (context_channels with at least two widths)",
        )
        encoders = ("lsdseg", "efficientnet_lite0", "efficientnet_lite2")
        _check(self.encoder in encoders, f"encoder={self.encoder!r}: use one of {encoders}")
        if self.encoder != "lsdseg":
            _check(self.factor == 8, f"encoder={self.encoder!r} gives S/8 latents: use factor=8")
            _check(
                not self.backbone,
                f"encoder={self.encoder!r} is pretrained already: leave backbone empty",
            )
            _check(
                not self.decoder,
                f"encoder={self.encoder!r} has no image decoder D_x: set decoder=false",
            )
            _check(
                self.pyramid_width > 0 and self.pyramid_width % self.groups == 0,
                f"pyramid_width={self.pyramid_width} must be a positive multiple of "
                f"groups={self.groups}",
            )


@dataclass(frozen=True)
class MaskVAEConfig:
    """Mask VAE E_m / D_m: mask (1, S, S) -> z (latent_channels, S/f, S/f) -> logits (1, S, S).

    The decoder runs once per hypothesis, so it stays thin: it produces logits at
    ``S / f * 2**(len(decoder_channels) - 1)`` and upsamples them bilinearly to S.
    """

    factor: int = 8  # spatial down-sampling f; 4 or 8
    latent_channels: int = 4  # c_m
    encoder_channels: tuple[int, ...] = (16, 32, 64)  # widths at S/2, S/4, S/8
    decoder_channels: tuple[int, ...] = (48, 16)  # widths from S/f upwards, one level each
    groups: int = 8  # GroupNorm groups
    loss: Literal["wce", "mse"] = "wce"  # reconstruction loss on the decoded logits
    foreground_weight: float = 4.0  # weight of foreground pixels in the weighted cross-entropy
    kl_weight: float = 1e-4  # weight of the KL term

    def __post_init__(self) -> None:
        _check(self.factor in (4, 8), f"factor={self.factor} must be 4 or 8")
        _check(self.latent_channels >= 1, f"latent_channels={self.latent_channels} must be >= 1")
        _check(self.groups >= 1, f"groups={self.groups} must be >= 1")
        _check_channels("encoder_channels", self.encoder_channels, self.groups)
        _check_channels("decoder_channels", self.decoder_channels, self.groups)
        levels = self.factor.bit_length() - 1
        _check(
            len(self.encoder_channels) == levels,
            f"encoder_channels={self.encoder_channels} needs {levels} widths for "
            f"factor={self.factor}",
        )
        _check(
            len(self.decoder_channels) <= levels + 1,
            f"decoder_channels={self.decoder_channels} has more levels than factor={self.factor}"
            " allows",
        )
        _check(self.loss in ("wce", "mse"), f"loss={self.loss!r} must be 'wce' or 'mse'")
        _check(
            self.foreground_weight > 0,
            f"foreground_weight={self.foreground_weight} must be > 0",
        )
        _check(self.kl_weight >= 0, f"kl_weight={self.kl_weight} must be >= 0")


@dataclass(frozen=True)
class UNetConfig:
    """Latent denoiser: concat(z_t, z_x) at S/f -> eps or v, same shape as z_t."""

    channels: tuple[int, ...] = (16, 32, 64)  # width per resolution level (S/f, S/2f, ...)
    num_res_blocks: int = 1  # residual blocks per level, on the way down and on the way up
    attention_levels: tuple[int, ...] = (2,)  # level indices that get self-attention
    head_dim: int = 32  # attention head width
    groups: int = 8  # GroupNorm groups
    time_embed_dim: int = 128  # width of the timestep embedding MLP
    # per-frame condition pyramid (UNet.condition): one width per level, () = none
    cond_channels: tuple[int, ...] = ()
    cond_depth: int = 1  # residual blocks per level of the condition pyramid

    def __post_init__(self) -> None:
        _check(self.groups >= 1, f"groups={self.groups} must be >= 1")
        _check_channels("channels", self.channels, self.groups)
        if self.cond_channels:
            _check_channels("cond_channels", self.cond_channels, self.groups)
            _check(
                len(self.cond_channels) == len(self.channels),
                f"cond_channels={self.cond_channels} must give one width per level of "
                f"channels={self.channels}",
            )
        _check_depth("cond_depth", self.cond_depth)
        _check_depth("num_res_blocks", self.num_res_blocks)
        for level in self.attention_levels:
            _check(
                0 <= level < len(self.channels),
                f"attention_levels={self.attention_levels}: level {level} does not exist "
                f"(0..{len(self.channels) - 1})",
            )
        _check(self.head_dim >= 1, f"head_dim={self.head_dim} must be >= 1")
        for level in self.attention_levels:
            _check(
                self.channels[level] % self.head_dim == 0,
                f"channels[{level}]={self.channels[level]} must be a multiple of "
                f"head_dim={self.head_dim}",
            )
        _check(
            self.time_embed_dim >= 4 and self.time_embed_dim % 2 == 0,
            f"time_embed_dim={self.time_embed_dim} must be an even number >= 4",
        )


@dataclass(frozen=True)
class DiffusionConfig:
    """Forward process and training objective."""

    timesteps: int = 1000  # T, number of training timesteps
    schedule: Literal["linear", "cosine", "scaled_linear"] = "linear"  # beta schedule
    beta_start: float = 1e-4  # linear schedules: first beta
    beta_end: float = 0.02  # linear schedules: last beta
    prediction: Literal["eps", "v"] = "v"  # what the denoiser predicts
    timestep_gamma: float = 2.0  # training t = T-1 - floor(T u^gamma): 1 uniform, >1 favours high t
    mask_loss_weight: float = 1.0  # auxiliary mask loss on the decoded x0 estimate (0 = off)
    # that loss: BCE + soft Dice, or the polyp literature's structure loss (boundary-weighted
    # BCE + weighted IoU, Wei et al. 2020 / PraNet)
    mask_loss: Literal["bce_dice", "structure"] = "bce_dice"

    def __post_init__(self) -> None:
        _check(2 <= self.timesteps <= 10000, f"timesteps={self.timesteps} must be in 2..10000")
        _check(
            self.schedule in ("linear", "cosine", "scaled_linear"),
            f"schedule={self.schedule!r} must be 'linear', 'cosine' or 'scaled_linear'",
        )
        _check(
            0 < self.beta_start < self.beta_end < 1,
            f"beta_start={self.beta_start}, beta_end={self.beta_end}: need "
            "0 < beta_start < beta_end < 1",
        )
        _check(
            self.prediction in ("eps", "v"), f"prediction={self.prediction!r} must be 'eps' or 'v'"
        )
        _check(self.mask_loss_weight >= 0, f"mask_loss_weight={self.mask_loss_weight} must be >= 0")
        _check(
            self.mask_loss in ("bce_dice", "structure"),
            f"mask_loss={self.mask_loss!r} must be 'bce_dice' or 'structure'",
        )
        _check(
            0.25 <= self.timestep_gamma <= 8,
            f"timestep_gamma={self.timestep_gamma} must be between 0.25 and 8",
        )


@dataclass(frozen=True)
class SamplerConfig:
    """DDIM sampling defaults (each overridable per call)."""

    steps: int = 4  # DDIM iterations
    eta: float = 0.0  # 0 = deterministic DDIM, 1 = DDPM-like ancestral noise
    hypotheses: int = 8  # K, masks sampled per frame
    threshold: float = 0.5  # mask = mean probability > threshold
    spacing: Literal["leading", "trailing", "linspace"] = "trailing"  # timestep selection
    # timestep shift (Esser et al. 2024, "Scaling rectified flow transformers", eq. 23): each
    # timestep's share u = (t + 1) / T of the schedule becomes shift u / (1 + (shift - 1) u), so
    # > 1 moves the steps after the first towards the noisy end; 1 keeps ``spacing``'s timesteps
    shift: float = 1.0
    # a frame is judged to hold a polyp when the presence score (Result.score) reaches this;
    # below it Result.mask is empty. 0 judges every frame a polyp frame (no presence head)
    presence_threshold: float = 0.5

    def __post_init__(self) -> None:
        _check(1 <= self.steps <= 1000, f"steps={self.steps} must be between 1 and 1000")
        _check(0.0 <= self.eta <= 1.0, f"eta={self.eta} must be between 0 and 1")
        _check(
            1 <= self.hypotheses <= 256,
            f"hypotheses={self.hypotheses} must be between 1 and 256",
        )
        _check(0.0 < self.threshold < 1.0, f"threshold={self.threshold} must be in (0, 1)")
        _check(
            self.spacing in ("leading", "trailing", "linspace"),
            f"spacing={self.spacing!r} must be 'leading', 'trailing' or 'linspace'",
        )
        _check(0.1 <= self.shift <= 10.0, f"shift={self.shift} must be between 0.1 and 10")
        _check(
            0.0 <= self.presence_threshold <= 1.0,
            f"presence_threshold={self.presence_threshold} must be between 0 and 1",
        )


@dataclass(frozen=True)
class ModelConfig:
    """The whole segmenter: sizes of every part plus input normalisation.

    The defaults are the architecture trained from scratch (``lsdseg train`` without ``--init``,
    and ``lsdseg.load("untrained")``): the from-scratch ``lsdseg`` image encoder with its decoder
    D_x, which stage 1 trains, inputs normalised to [-1, 1], latent scale 1 (stage 1 measures
    it), BCE + soft Dice as the auxiliary mask loss, and 4 sampling steps at threshold 0.5.
    The bundled weights (:meth:`bundled`) were fine-tuned from such a model, so their config
    differs in exactly these fields:

    - ``image_ae.encoder='efficientnet_lite2'``, ``image_ae.decoder=False`` and the backbone's
      ``image_mean`` / ``image_std`` (127/255, 128/255): the pretrained encoder that
      ``--image-encoder`` swaps in has no D_x, and from scratch it would need ImageNet weights;
    - ``image_ae.context_depth=2``: grown before that swap (a pretrained encoder does not use it);
    - ``latent_scale`` (3.347): measured on the training masks at the end of stage 1;
    - ``diffusion.mask_loss='structure'``: the loss of the fine-tuning runs;
    - ``sampler.steps=2``: picked on the validation split when the weights were bundled (at most
      2 steps there, the latency budget; the threshold, 0.5, is the default's);
    - ``sampler.shift=2.0``: timesteps 999, 666 instead of 999, 499, chosen on the validation
      split for the entropy's error AUROC at the same cost (``benchmarks/RESULTS.md``);
    - ``presence=64`` and ``sampler.presence_threshold`` (0.1344): a presence head trained with
      ``lsdseg train --stage presence`` on polyp-free frames, its threshold keeping every
      validation polyp frame; a model trained from scratch has none until that stage runs.

    Defaults equal to the bundled model would make from-scratch training start from an encoder
    whose stage 1 cannot run and whose weights need an extra, so they stay the from-scratch ones.
    """

    image_size: int = 256  # S, the square input size
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # RGB mean of [0, 1] pixels
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)  # RGB std of [0, 1] pixels
    latent_scale: float = 1.0  # mask latents are multiplied by this to get unit variance
    image_ae: ImageAEConfig = field(default_factory=ImageAEConfig)
    mask_vae: MaskVAEConfig = field(default_factory=MaskVAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    # hidden width of the presence head on the image features (lsdseg.presence); 0 = no head,
    # every frame then scores 1 (a polyp frame)
    presence: int = 0

    def __post_init__(self) -> None:
        f = self.image_ae.factor
        _check(
            self.mask_vae.factor == f,
            f"mask_vae.factor={self.mask_vae.factor} must equal image_ae.factor={f}",
        )
        pyramid = 2 if self.image_ae.encoder != "lsdseg" else 0  # pretrained: S/32 features
        down = 2 ** max(len(self.unet.channels) - 1, len(self.image_ae.context_channels), pyramid)
        _check(
            self.image_size % (f * down) == 0 and self.image_size >= f * down,
            f"image_size={self.image_size} must be a multiple of {f * down} "
            f"(factor {f} x UNet down-sampling {down})",
        )
        _check(
            self.image_size <= MAX_IMAGE_SIZE,
            f"image_size={self.image_size} must be at most {MAX_IMAGE_SIZE}",
        )
        _check(
            len(self.image_mean) == 3 and all(math.isfinite(m) for m in self.image_mean),
            f"image_mean={self.image_mean} needs 3 finite values",
        )
        _check(
            len(self.image_std) == 3 and all(math.isfinite(s) and s > 0 for s in self.image_std),
            f"image_std={self.image_std} needs 3 finite positive values",
        )
        _check(
            math.isfinite(self.latent_scale) and self.latent_scale > 0,
            f"latent_scale={self.latent_scale} must be a finite number > 0",
        )
        _check(0 <= self.presence <= 4096, f"presence={self.presence} must be in 0..4096")

    @property
    def latent_size(self) -> int:
        """Side of the latent grid, S / f."""
        return self.image_size // self.image_ae.factor

    @classmethod
    def bundled(cls) -> ModelConfig:
        """The config of the bundled weights (``lsdseg/weights/default/config.json``)."""
        from importlib import resources

        file = resources.files("lsdseg") / "weights" / "default" / "config.json"
        return from_dict(cls, json.loads(file.read_text())["model"], where=f"{file}:model")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (saved in the run folder)."""

    stage: Literal["all", "autoencoders", "diffusion"] = "all"  # which stage(s) to run
    ae_epochs: int = 10  # stage 1 epochs
    epochs: int = 60  # stage 2 epochs
    batch_size: int = 16  # global batch (split across DDP ranks)
    lr: float = 1e-3  # stage 1 learning rate
    diffusion_lr: float = 5e-4  # stage 2 learning rate (cosine decay, warmup)
    warmup_steps: int = 200  # linear warm-up of the learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    ema_decay: float = 0.999  # EMA of stage-2 weights (validated and saved)
    image_recon_weight: float = 1.0  # stage 1 image reconstruction loss weight (0 = skip D_x)
    train_image_encoder: bool = True  # fine-tune E_x jointly in stage 2
    val_every: int = 1  # validate every N stage-2 epochs
    val_hypotheses: int = 8  # K used for validation Dice
    val_steps: int = 4  # DDIM steps used for validation Dice
    seed: int = 0  # seeds data order, augmentation, noise
    num_workers: int = 0  # DataLoader workers per rank
    max_steps_per_epoch: int = 0  # cap for smoke tests (0 = full epochs)
    init: str = ""  # checkpoint folder to start from (e.g. the bundled weights)
    grow: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides applied to init
    # replace init's image encoder by a pretrained one ("efficientnet_lite0" / "_lite2", ImageNet
    # weights from the [train] extra), keeping its mask VAE and denoiser
    image_encoder: str = ""
    pyramid_width: int = 96  # width of that encoder's feature-pyramid decoder
    feature_views: int = 0  # >0: cache the frozen backbone part's output for this many views
    backbone_lr_scale: float = 1.0  # learning-rate multiplier of the pretrained backbone
    # also fine-tune the backbone's early part (stem and blocks up to S/8) that stays as imported
    # otherwise; every step then runs the whole backbone, so it excludes feature_views
    train_early_stages: bool = False
    # multi-scale training: each step resizes its batch to one of these sizes S, drawn uniformly
    # (validation stays at the model's size); () trains at the model's size only. The images
    # are resized after loading, so it excludes feature_views (cached at the model's size)
    train_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        checks = [
            (
                self.stage in ("all", "autoencoders", "diffusion"),
                f"stage={self.stage!r} must be 'all', 'autoencoders' or 'diffusion'",
            ),
            (self.ae_epochs >= 0, f"ae_epochs={self.ae_epochs} must be >= 0"),
            (self.epochs >= 0, f"epochs={self.epochs} must be >= 0"),
            (self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1"),
            (
                all(math.isfinite(r) and r > 0 for r in (self.lr, self.diffusion_lr)),
                f"learning rates must be finite and > 0 (lr={self.lr}, "
                f"diffusion_lr={self.diffusion_lr})",
            ),
            (0 <= self.ema_decay < 1, f"ema_decay={self.ema_decay} must be in [0, 1)"),
            (self.val_every >= 1, f"val_every={self.val_every} must be >= 1"),
            (
                1 <= self.val_hypotheses <= 256,
                f"val_hypotheses={self.val_hypotheses} must be between 1 and 256",
            ),
            (  # the sampler's range (SamplerConfig.steps), checked before any epoch trains
                1 <= self.val_steps <= 1000,
                f"val_steps={self.val_steps} must be between 1 and 1000",
            ),
            (not self.grow or bool(self.init), "grow needs init: the checkpoint to grow from"),
            (
                not self.image_encoder or bool(self.init),
                "image_encoder needs init: the checkpoint whose mask VAE and denoiser to keep",
            ),
            (self.feature_views >= 0, f"feature_views={self.feature_views} must be >= 0"),
            (self.backbone_lr_scale > 0, "backbone_lr_scale must be > 0"),
            (
                not (self.train_early_stages and self.feature_views),
                "train_early_stages recomputes the early stages every step: it cannot use "
                f"feature_views={self.feature_views} (set it to 0)",
            ),
            (
                not self.train_early_stages or self.train_image_encoder,
                "train_early_stages needs train_image_encoder",
            ),
            (
                all(
                    not isinstance(s, bool) and isinstance(s, int) and s > 0
                    for s in self.train_sizes
                ),
                f"train_sizes={list(self.train_sizes)} must be positive integers",
            ),
            (
                not (self.train_sizes and self.feature_views),
                "train_sizes resizes every batch after loading: it cannot use "
                f"feature_views={self.feature_views}, which caches features at one size (set it "
                "to 0)",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


def to_dict(config: Any) -> dict[str, Any]:
    """Convert a config dataclass (nested) to plain JSON-ready values."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Coerce a JSON value to the annotated field type ``tp``."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a JSON object {{...}}, got {json_kind(value)}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is a subclass of int: JSON `true` must not silently become steps=1
    wrong_bool = tp is not bool and isinstance(value, bool)
    if tp in (int, float, str, bool) and (wrong_bool or not isinstance(value, tp)):
        raise ValueError(f"{where}={value!r}: expected {tp.__name__}")
    return value


def json_kind(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words (for error messages)."""
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return kinds.get(type(value), type(value).__name__)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build ``cls`` from a dict, rejecting unknown keys; missing keys take their defaults.

    Raises:
        ValueError: ``data`` is not a dict, an unknown key (the valid ones are listed), a wrong
            type or an invalid value.
    """
    if not isinstance(data, dict):
        raise ValueError(
            f"{where}: expected a JSON object {{...}} of {cls.__name__} settings, got "
            f"{json_kind(data)}"
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def save_json(config: Any, path: str | Path) -> None:
    """Write a config as indented JSON."""
    Path(path).write_text(json.dumps(to_dict(config), indent=2) + "\n")


def load_json(cls: type[T], path: str | Path) -> T:
    """Read a config of type ``cls`` from a JSON file (unknown keys are an error)."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return from_dict(cls, data, where=str(path))
