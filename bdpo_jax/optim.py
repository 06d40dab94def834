"""The optimizer and its learning-rate schedule, from ``config.optimizer``."""

from __future__ import annotations

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


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Gradient clipping, then AdamW or Adafactor, under the warmup schedule (``config`` is the whole run's)."""
    opt = config.optimizer
    schedule = learning_rate_schedule(peak_learning_rate(config), opt.warmup_steps, opt.decay, config.train.steps)
    if opt.name == "adamw":
        core = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
    elif opt.name == "adafactor":
        core = optax.adafactor(schedule, weight_decay_rate=opt.weight_decay or None)
    else:
        raise ValueError(f"optimizer.name {opt.name!r}: choose one of {OPTIMIZERS}")
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip), core), schedule
