"""Run configuration: dataclasses are the one source of truth; TOML files and ``--section.key
value`` overrides map onto them, and unknown keys are errors.

A run has four sections: ``[model]`` (:class:`hyperp.model.ModelConfig`), ``[optim]``,
``[data]`` and ``[train]``. :meth:`RunConfig.plan` applies the HyperP rules (docs/method.md §4) to
turn a base LR and base scale into this run's peak LR, token budget and step count, and says how.
"""

from __future__ import annotations

import difflib
import json
import math
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hyperp.model.config import ModelConfig
from hyperp.rules import (
    SCHEDULES,
    ModelScale,
    TransferRule,
    describe_schedule,
    muon_logit_multiplier,
    parse_number,
    transfer,
)

__all__ = [
    "CONFIG_DIR",
    "DataConfig",
    "OptimConfig",
    "RunConfig",
    "RunPlan",
    "TrainConfig",
    "coerce",
    "load_config",
    "parse_overrides",
    "read_run_config",
]

# Settings that do not change a run's trajectory: a run may resume with them changed, and they
# do not enter the default run-directory name.
NON_TRAJECTORY_KEYS = frozenset(
    ("train", key)
    for key in (
        "progress",
        "log_every",
        "monitor_every",
        "eval_every",
        "eval_batches",
        "checkpoint_every",
        "keep_checkpoints",
        "tensorboard",
        "wandb",
        "wandb_project",
        "threads",
        "nproc",
        "peak_flops",
        "compile",
        "activation_checkpointing",
        "device",
        "distributed",
        "shard_size",
        "async_checkpoint",
    )
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # presets ship in the package


@dataclass
class OptimConfig:
    """How the optimizer and its LR are set (docs/method.md §2, §4).

    The peak LR is ``lr`` when given; otherwise ``base_lr`` transferred by the HyperP rule from
    the base scale (``base_depth``, ``base_width``, ``base_tokens``, ``base_batch``), each of
    which defaults to this run's own value (so with no base given, ``lr = base_lr``).
    """

    method: str = "hyperp"
    lr: float | None = None
    head_lr: float | None = None  # the output head's own peak LR (default: the same as all)
    base_lr: float = 0.02
    base_depth: int | None = None
    base_width: int | None = None
    base_tokens: float | None = None
    base_batch: float | None = None
    token_exponent: float = -0.32
    batch_exponent: float = 0.5
    depth_exponent: float = 0.5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    final_lr_fraction: float = 0.1
    schedule: str = "linear"  # linear (the paper's), cosine or wsd (docs/method.md §4.2)
    decay_fraction: float = 0.2  # wsd: the share of the steps after warmup spent decaying
    grad_clip: float = 1.0
    momentum: float = 0.95
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    sphere: str = "matrix"
    ns_dtype: str = "auto"

    def __post_init__(self) -> None:
        _choice("optim.method", self.method, ("hyperp", "muon", "adamw"))
        _choice("optim.sphere", self.sphere, ("matrix", "tensor"))
        _choice("optim.ns_dtype", self.ns_dtype, ("auto", "fp32", "bf16"))
        _choice("optim.schedule", self.schedule, SCHEDULES)
        _require(0 < self.decay_fraction <= 1, "optim.decay_fraction must be in (0, 1]")
        _require(self.lr is None or self.lr > 0, f"optim.lr must be positive, got {self.lr}")
        _require(
            self.head_lr is None or self.head_lr > 0,
            f"optim.head_lr must be positive (or left out), got {self.head_lr}",
        )
        _require(self.base_lr > 0, f"optim.base_lr must be positive, got {self.base_lr}")
        _require(self.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
        _require(0 <= self.final_lr_fraction <= 1, "optim.final_lr_fraction must be in [0, 1]")
        _require(self.grad_clip >= 0, "optim.grad_clip must be >= 0 (0 disables clipping)")
        _require(self.weight_decay >= 0, "optim.weight_decay must be >= 0")


@dataclass
class DataConfig:
    """Where tokens come from. An empty ``path`` means the built-in corpus (the Python standard
    library's sources, prepared once into the cache with ``vocab_size`` and ``max_bytes``)."""

    path: str = ""
    vocab_size: int = 8192
    max_bytes: int = 0

    def __post_init__(self) -> None:
        _require(self.vocab_size >= 257, "data.vocab_size must be at least 257 (the bytes + EOT)")
        _require(self.max_bytes >= 0, "data.max_bytes must be >= 0 (0 = the whole corpus)")


@dataclass
class TrainConfig:
    """The loop: budget, batch, precision, logging, evaluation and checkpoints.

    The budget is ``tokens`` (0: Chinchilla-style from ``optim.base_tokens``, docs/method.md §4) or
    ``steps`` (which wins when both are set). ``batch_size`` is the global number of sequences
    per optimizer step, split over data-parallel ranks and then ``grad_accum`` micro-batches.
    ``distributed``: ``ddp``, ``fsdp`` or ``hsdp`` (shard within groups of ``shard_size``
    processes, replicate across them; 0 = the processes of one node).
    ``async_checkpoint``: training goes on while checkpoint shards are written.
    ``init_from``: start from safetensors weights (a file, a Hugging Face directory or a
    ``hyperp export``) instead of a fresh init; see :mod:`hyperp.train.initial`.
    """

    tokens: float = 0.0
    steps: int = 0
    batch_size: int = 16
    seq_len: int = 256
    grad_accum: int = 1
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    distributed: str = "ddp"
    shard_size: int = 0
    async_checkpoint: bool = False
    nproc: int = 1
    threads: int = 0
    log_every: int = 10
    monitor_every: int = 50
    eval_every: int = 100
    eval_batches: int = 20
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    progress: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "hyperp"
    peak_flops: float = 0.0
    init_from: str = ""

    def __post_init__(self) -> None:
        _require(self.tokens >= 0 and self.steps >= 0, "train.tokens and train.steps must be >= 0")
        for name in (
            "batch_size",
            "seq_len",
            "grad_accum",
            "nproc",
            "log_every",
            "keep_checkpoints",
        ):
            _require(getattr(self, name) >= 1, f"train.{name} must be at least 1")
        for name in (
            "monitor_every",
            "eval_every",
            "eval_batches",
            "checkpoint_every",
            "threads",
            "shard_size",
        ):
            _require(getattr(self, name) >= 0, f"train.{name} must be >= 0 (0 disables)")
        _choice("train.precision", self.precision, ("auto", "fp32", "bf16"))
        _choice("train.distributed", self.distributed, ("ddp", "fsdp", "hsdp"))

    @property
    def batch_tokens(self) -> int:
        return self.batch_size * self.seq_len


@dataclass(frozen=True)
class RunPlan:
    """What the rules give this run (see :meth:`RunConfig.plan`)."""

    lr: float
    final_lr: float
    lr_multiplier: float
    tokens: int
    steps: int
    batch_tokens: int
    params: int
    flops_per_token: float
    flops: float
    depth_ratio: float
    explanation: tuple[str, ...]
    width_ratio: float = (
        1.0  # n0/n: the AdamW baseline's muP matrix-LR factor (docs/method.md §2.5)
    )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["explanation"] = list(self.explanation)
        return out


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def resolve(self, data_vocab_size: int, hf_config: dict | None = None) -> RunConfig:
        """This config with what the run derives filled in (a new object; nothing is mutated):

        - ``model.vocab_size``: the data's vocabulary, unless set explicitly, and then at least
          the data's (a larger table is allowed, e.g. padded for speed);
        - ``model.logit_multiplier``: the method's own unless set: ``d0/d`` for the Muon
          baseline (docs/method.md §2.5), 1 otherwise;
        - a Hugging Face model (``model.hf`` or ``model.hf_config``): its config dict and shape
          (:func:`hyperp.hf.resolve_hf`; ``hf_config`` is a resumed run's recorded copy).
        """
        if self.model.is_hf:
            from hyperp.hf import resolve_hf

            return replace(self, model=resolve_hf(self, data_vocab_size, hf_config))
        model = self.model
        vocab = model.vocab_size or data_vocab_size
        if vocab < data_vocab_size:
            raise ValueError(
                f"model.vocab_size {vocab} is smaller than the data's vocabulary "
                f"({data_vocab_size} ids); raise it to at least {data_vocab_size} or leave it "
                "unset to take the data's"
            )
        multiplier = model.logit_multiplier
        if multiplier is None:
            base_depth = self.optim.base_depth or model.depth
            muon = self.optim.method == "muon"
            multiplier = muon_logit_multiplier(base_depth, model.depth) if muon else 1.0
        resolved = replace(model, vocab_size=vocab, logit_multiplier=multiplier)
        return replace(self, model=resolved)

    @property
    def resolved(self) -> bool:
        return self.model.vocab_size is not None and self.model.logit_multiplier is not None

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(getattr(self, name)) for name in SECTIONS}

    def trajectory_dict(self) -> dict[str, dict[str, Any]]:
        """:meth:`to_dict` without the settings that do not change what is trained."""
        values = self.to_dict()
        if not self.model.is_hf:  # run names of the own family stay as they were
            del values["model"]["hf"], values["model"]["hf_config"]
        return {
            section: {k: v for k, v in table.items() if (section, k) not in NON_TRAJECTORY_KEYS}
            for section, table in values.items()
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        unknown = sorted(set(values) - set(SECTIONS))
        if unknown:
            raise ValueError(
                f"unknown config sections {unknown}; a config has [{'], ['.join(SECTIONS)}]"
            )
        built = {}
        for name, section_class in SECTIONS.items():
            table = values.get(name, {})
            if not isinstance(table, dict):
                raise ValueError(f"config section [{name}] must be a table, got {table!r}")
            _check_keys(name, section_class, table)
            typed = {k: coerce(name, k, v, text=False) for k, v in table.items()}  # TOML, JSON
            built[name] = section_class(**typed)
        return cls(**built)

    def plan(self) -> RunPlan:
        """Peak LR, token budget and steps of this run from the HyperP rules (docs/method.md §4).

        Needs a resolved config (:meth:`resolve`): the vocabulary enters the parameter count."""
        if not self.resolved:
            raise ValueError("plan() needs a resolved config: call config.resolve(data_vocab_size)")
        optim, train, model = self.optim, self.train, self.model
        batch_tokens = train.batch_tokens
        if model.is_hf:
            from hyperp.hf import hf_scale, plan_lines

            scale = hf_scale(model.hf_config, train.seq_len)
            base_scale = replace(
                scale, depth=optim.base_depth or scale.depth, width=optim.base_width or scale.width
            )
            if optim.base_tokens and not (train.steps or train.tokens) and base_scale != scale:
                raise ValueError(
                    "the Chinchilla budget needs the base model's parameter count, which hyperp "
                    "knows only for its own family; set train.steps or train.tokens"
                )
        else:
            scale = model.scale()
            base_scale = ModelScale(
                depth=optim.base_depth or model.depth,
                width=optim.base_width or (model.width if optim.base_depth is None else None),
                aspect_ratio=model.aspect_ratio,
                head_dim=model.head_dim,
                n_kv_heads=model.n_kv_heads,
                vocab_size=model.vocab_size,
                context=model.context,
            )
        if train.steps:
            tokens = train.steps * batch_tokens
        elif train.tokens:
            tokens = int(train.tokens)
        elif optim.base_tokens:  # Chinchilla-style, by the rule's own formula
            chinchilla = TransferRule(base=base_scale, base_tokens=optim.base_tokens)
            tokens = int(chinchilla.tokens_for(scale))
        else:
            raise ValueError(
                "no training budget: set train.steps, train.tokens, or optim.base_tokens (then "
                "the budget is base_tokens·N(d)/N(d0), Chinchilla-style)"
            )
        steps = train.steps or max(1, math.ceil(tokens / batch_tokens))
        tokens = steps * batch_tokens
        rule = TransferRule.for_method(
            optim.method,
            base=base_scale,
            base_lr=optim.base_lr,
            base_tokens=optim.base_tokens or tokens,
            base_batch=optim.base_batch or batch_tokens,
            batch_exponent=optim.batch_exponent,
            depth_exponent=optim.depth_exponent,
            final_lr_fraction=optim.final_lr_fraction,
            **({"token_exponent": optim.token_exponent} if optim.method == "hyperp" else {}),
        )
        transferred = transfer(scale, rule=rule, tokens=tokens, batch=batch_tokens)
        multiplier = transferred.lr_multiplier
        if optim.lr is not None:
            lr, how = optim.lr, f"lr {optim.lr:g} given directly (optim.lr); no transfer applied"
        else:
            lr = transferred.lr
            how = (
                f"lr {lr:.5g} = base_lr {optim.base_lr:g} x {multiplier:.4f}  "
                f"[batch (B/B0)^{rule.batch_exponent:g} = ({batch_tokens}/{rule.base_batch:.6g})"
                f"^{rule.batch_exponent:g}; depth (d0/d)^{rule.depth_exponent:g} = "
                f"({base_scale.depth}/{model.depth})^{rule.depth_exponent:g}; tokens (T/T0)^"
                f"{rule.token_exponent:g} = ({tokens:.4g}/{rule.base_tokens:.4g})^"
                f"{rule.token_exponent:g}]"
            )
        described = (
            plan_lines(model.hf_config, scale)
            if model.is_hf
            else (
                f"model: depth {model.depth}, width {model.width}, vocabulary "
                f"{model.vocab_size}, {scale.params / 1e6:.2f}M dense-equivalent parameters "
                "(N of docs/method.md §4)",
            )
        )
        explanation = (
            *described,
            f"budget: {tokens:,} tokens = {steps} steps x {batch_tokens:,} tokens "
            f"({tokens / scale.params:.3g} tokens/parameter)",
            how,
            describe_schedule(
                optim.schedule,
                warmup_steps=optim.warmup_steps,
                final_fraction=optim.final_lr_fraction,
                decay_fraction=optim.decay_fraction,
            ),
        )
        return RunPlan(
            lr=lr,
            final_lr=lr * optim.final_lr_fraction,
            lr_multiplier=multiplier if optim.lr is None else 1.0,
            tokens=tokens,
            steps=steps,
            batch_tokens=batch_tokens,
            params=transferred.params,
            flops_per_token=transferred.flops_per_token,
            flops=transferred.flops,
            depth_ratio=base_scale.depth / model.depth,
            explanation=explanation,
            width_ratio=base_scale.width / model.width,
        )


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "optim": OptimConfig,
    "data": DataConfig,
    "train": TrainConfig,
}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    _require(value in options, f"{name} must be one of {', '.join(options)}; got {value!r}")


def _check_keys(section: str, section_class: type, table: dict[str, Any]) -> None:
    known = [f.name for f in fields(section_class)]
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {section}.{close[0]}?" if close else ""
            raise ValueError(
                f"unknown config key {section}.{key}{hint} (valid keys: {', '.join(known)})"
            )


def _field_types(section_class: type) -> dict[str, Any]:
    return typing.get_type_hints(section_class)


_NONE = ("none", "null", "")
_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    dict: "a table (JSON on the command line)",
}


def coerce(section: str, key: str, value: Any, *, text: bool = True) -> Any:
    """``value`` as the type of config field ``section.key``: text (from the command line) is
    parsed; other values (from TOML or Python) must already have the type, and with
    ``text=False`` (a typed file) so must text (``steps = "30"`` is refused). A bool is not an
    integer, and a float is not an integer even when whole (``steps = 2.0`` is refused)."""
    annotation = _field_types(SECTIONS[section])[key]
    options = (
        typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    )
    optional = type(None) in options
    base = next(t for t in options if t is not type(None))
    if optional and (value is None or (isinstance(value, str) and value.lower() in _NONE)):
        return None  # TOML has no null: "none" says it
    if isinstance(value, str) and base is not str and text:
        return _parse_text(value, base, optional, f"{section}.{key}")
    valid = (
        isinstance(value, base) and not (base is int and isinstance(value, bool))
        if base is not float
        else isinstance(value, int | float) and not isinstance(value, bool)
    )
    if not valid:
        raise ValueError(
            f"{section}.{key} must be {_TYPE_NAMES.get(base, base.__name__)}"
            f"{' or none' if optional else ''}, got {value!r} ({type(value).__name__})"
        )
    return float(value) if base is float else value


def _parse_text(text: str, base: type, optional: bool, name: str) -> Any:
    try:
        if base is dict:  # a table on the command line: JSON
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
        if base is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        number = parse_number(text)
        if base is int:
            if number != int(number):
                raise ValueError
            return int(number)
        return float(number)
    except (ValueError, OverflowError):  # json.JSONDecodeError is a ValueError
        raise ValueError(
            f"--{name} {text!r} is not a valid {base.__name__} "
            f"(expected {_TYPE_NAMES.get(base, base.__name__)})"
        ) from None


def parse_overrides(
    items: list[str] | dict[str, Any] | None,
    sections: tuple[str, ...] | None = None,
    *,
    typed: bool = False,
) -> dict[str, dict[str, Any]]:
    """``["--train.steps", "100", "--model.width=64"]`` (or ``{"train.steps": 100}``) to nested
    typed values: the one override parser of every verb. ``sections`` limits which sections may
    be set. Unknown sections or keys are errors that name the closest valid key; values of the
    wrong type are errors that name the expected type. ``typed=True`` for values from a typed
    file (a sweep's TOML): text there is not parsed, so ``"train.steps" = ["30"]`` is refused."""
    allowed = sections or tuple(SECTIONS)
    pairs: list[tuple[str, Any]] = []
    if isinstance(items, dict):
        pairs = list(items.items())
    elif items:
        index = 0
        while index < len(items):
            item = items[index]
            if not item.startswith("--"):
                raise ValueError(f"expected an override like --train.steps 100, got {item!r}")
            key = item[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            else:
                if index + 1 >= len(items):
                    raise ValueError(f"override --{key} needs a value")
                index += 1
                value = items[index]
            pairs.append((key, value))
            index += 1
    nested: dict[str, dict[str, Any]] = {}
    for key, value in pairs:
        section, _, name = key.partition(".")
        if section not in allowed or not name:
            raise ValueError(
                f"unknown override --{key}; overrides look like --SECTION.KEY VALUE with SECTION "
                f"{'one of ' if len(allowed) > 1 else ''}{', '.join(allowed)}"
            )
        _check_keys(section, SECTIONS[section], {name: None})
        nested.setdefault(section, {})[name] = coerce(section, name, value, text=not typed)
    return nested


def _resolve_config_path(path: str | Path) -> Path:
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    preset = CONFIG_DIR / f"{candidate.name}.toml"
    if candidate.suffix == "" and preset.is_file():
        return preset
    presets = sorted(p.stem for p in CONFIG_DIR.glob("*.toml")) if CONFIG_DIR.is_dir() else []
    raise FileNotFoundError(
        f"config file {str(path)!r} not found; give a TOML path or a preset name "
        f"({', '.join(presets) or 'none installed'})"
    )


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> RunConfig:
    """Read a TOML config (a path, or a preset name from ``configs/`` such as ``tiny``), apply
    overrides, validate. ``path=None`` starts from the dataclass defaults."""
    values: dict[str, dict[str, Any]] = {}
    if path is not None:
        resolved = _resolve_config_path(path)
        try:
            values = tomllib.loads(resolved.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{resolved} is not valid TOML: {error}") from None
    for section, table in parse_overrides(overrides).items():
        values.setdefault(section, {}).update(table)
    return RunConfig.from_dict(values)


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run directory was trained with (its ``config.json``)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no config.json")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg})") from None
    return RunConfig.from_dict({name: values.get(name, {}) for name in SECTIONS})
