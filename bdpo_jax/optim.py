"""The optimizer and its learning-rate schedule, from ``config.optimizer``."""

from __future__ import annotations

import dataclasses

import ml_collections
import optax

OPTIMIZERS = ("adamw", "adafactor")
DECAYS = ("constant", "cosine")
LR_PER_PAIR = 1e-8  # Diffusion-DPO's rate: 1e-8 per pair of the global batch


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
    """``optimizer.learning_rate`` if set, else 1e-8 x ``train.global_batch``."""
    rate = config.optimizer.learning_rate
    return float(rate) if rate is not None else LR_PER_PAIR * config.train.global_batch


def learning_rate_schedule(
    peak: float, warmup_steps: int, decay: str = "constant", total_steps: int | None = None
) -> optax.Schedule:
    """Linear warmup to the peak, then constant (Diffusion-DPO's schedule) or a
    cosine to zero at ``total_steps`` (the usual schedule of supervised fine-tuning)."""
    warmup = max(warmup_steps, 1)
    if decay == "constant":
        return optax.linear_schedule(0.0, peak, warmup)
    if decay == "cosine":
        if total_steps is None or total_steps <= warmup:
            raise ValueError(f"optimizer.decay 'cosine' needs train.steps ({total_steps}) beyond the warmup ({warmup})")
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total_steps)
    raise ValueError(f"optimizer.decay {decay!r}: choose one of {DECAYS}")


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """Everything the optimizer and its schedule are made of, read from the config once. Hashable: a
    train step's program is a function of it (``trainer.jitted_step`` reuses a program by it)."""

    name: str
    learning_rate: float  # the peak, after the warmup
    warmup_steps: int
    decay: str
    total_steps: int | None  # the cosine's end; None for the constant schedule, which does not end
    b1: float
    b2: float
    eps: float
    weight_decay: float
    grad_clip: float

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> OptimizerSettings:
        """``config`` is the whole run's (the default rate follows ``train.global_batch``)."""
        opt = config.optimizer
        return cls(
            opt.name, peak_learning_rate(config), opt.warmup_steps, opt.decay,
            config.train.steps if opt.decay == "cosine" else None,
            opt.b1, opt.b2, opt.eps, opt.weight_decay, opt.grad_clip,
        )  # fmt: skip


def make_optimizer(settings: OptimizerSettings) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Gradient clipping, then AdamW or Adafactor, under the warmup schedule."""
    schedule = learning_rate_schedule(
        settings.learning_rate, settings.warmup_steps, settings.decay, settings.total_steps
    )
    if settings.name == "adamw":
        core = optax.adamw(
            schedule, b1=settings.b1, b2=settings.b2, eps=settings.eps, weight_decay=settings.weight_decay
        )
    elif settings.name == "adafactor":
        core = optax.adafactor(schedule, weight_decay_rate=settings.weight_decay or None)
    else:
        raise ValueError(f"optimizer.name {settings.name!r}: choose one of {OPTIMIZERS}")
    return optax.chain(optax.clip_by_global_norm(settings.grad_clip), core), schedule
