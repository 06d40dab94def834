"""The base model's DDPM training schedule and prediction target, from its
diffusers ``scheduler_config.json`` (SD2.1-768 and others predict v)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    alphas_cumprod: tuple[float, ...]
    prediction_type: str = "epsilon"

    @classmethod
    def from_config(cls, config: dict) -> NoiseSchedule:
        steps = config.get("num_train_timesteps", 1000)
        start, end = config.get("beta_start", 0.00085), config.get("beta_end", 0.012)
        kind = config.get("beta_schedule", "scaled_linear")
        if kind == "scaled_linear":
            betas = np.linspace(start**0.5, end**0.5, steps, dtype=np.float64) ** 2
        elif kind == "linear":
            betas = np.linspace(start, end, steps, dtype=np.float64)
        else:
            raise ValueError(f"scheduler beta_schedule {kind!r} is not supported (scaled_linear, linear)")
        prediction = config.get("prediction_type", "epsilon")
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"scheduler prediction_type {prediction!r}: we train {PREDICTION_TYPES}")
        return cls(tuple(np.cumprod(1.0 - betas).tolist()), prediction)

    @classmethod
    def from_pipeline(cls, pipeline_dir: str | Path) -> NoiseSchedule:
        path = Path(pipeline_dir) / "scheduler" / "scheduler_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the base pipeline's scheduler says the training schedule")
        return cls.from_config(json.loads(path.read_text()))

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def noisy_and_target(self, x: jax.Array, noise: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x_t = sqrt(a_t) x + sqrt(1 - a_t) eps; target eps, or v = sqrt(a_t) eps - sqrt(1 - a_t) x."""
        alpha = jnp.asarray(self.alphas_cumprod, jnp.float32)[t][:, None, None, None]
        noisy = jnp.sqrt(alpha) * x + jnp.sqrt(1 - alpha) * noise
        if self.prediction_type == "epsilon":
            return noisy, noise
        return noisy, jnp.sqrt(alpha) * noise - jnp.sqrt(1 - alpha) * x
