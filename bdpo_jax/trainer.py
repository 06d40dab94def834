"""A run, checked and then built: ``plan_run`` validates every config value
against itself, the devices, the cache's manifest and the base model's
config.json and lists every problem in one error, before any weight is read;
``build_trainer`` then loads each weight tensor straight onto its shards and
jits the step. With ``config.lora.rank`` > 0 the UNet's weights are a frozen
base, loaded once (in ``lora.base_dtype``), and the state holds adapters.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from bdpo_jax import sharding
from bdpo_jax.data import Augment, CacheDataset, PairLoader
from bdpo_jax.errors import UserError
from bdpo_jax.labels import LabelSource
from bdpo_jax.models import ModelOptions, UNetConfig, abstract_unet, load_params
from bdpo_jax.models.lora import LoRASpec
from bdpo_jax.models.lora_weights import init_adapters
from bdpo_jax.models.weights import find_unet_dir, weight_files
from bdpo_jax.objective import OBJECTIVES
from bdpo_jax.optim import OPTIMIZERS, learning_rate_schedule, make_optimizer, peak_learning_rate
from bdpo_jax.schedule import NoiseSchedule
from bdpo_jax.step import StepConfig, TrainState, eval_metrics, init_state, train_step

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(UserError):
    """The train config does not fit itself, the devices, the cache or the base model."""


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a checked config resolves to; nothing in it holds a weight."""

    config: ml_collections.ConfigDict
    dataset: CacheDataset
    unet_dir: Path
    unet_config: UNetConfig
    options: ModelOptions
    step_config: StepConfig
    devices: tuple
    mesh_shape: tuple[int, int]  # (data, fsdp)
    learning_rate: float
    lora: LoRASpec | None = None  # None: full fine-tuning


def config_value_problems(config: ml_collections.ConfigDict) -> list[str]:
    """What is wrong with the config's values on their own."""
    t, opt = config.train, config.optimizer
    rules = [
        (t.objective in OBJECTIVES, f"train.objective {t.objective!r}: choose one of {OBJECTIVES}"),
        (t.steps >= 1, f"train.steps {t.steps} must be at least 1"),
        (t.global_batch >= 1, f"train.global_batch {t.global_batch} must be at least 1"),
        (t.grad_accum >= 1, f"train.grad_accum {t.grad_accum} must be at least 1"),
        (t.beta > 0, f"train.beta {t.beta} must be positive"),
        (t.ref_refresh_every >= 0, f"train.ref_refresh_every {t.ref_refresh_every}: 0 (never) or a step count"),
        (0 <= t.caption_dropout <= 1, f"train.caption_dropout {t.caption_dropout} is not a probability"),
        (config.model.dtype in DTYPES, f"model.dtype {config.model.dtype!r}: choose one of {DTYPES}"),
        (config.lora.rank >= 0, f"lora.rank {config.lora.rank}: 0 (full fine-tuning) or the adapters' rank"),
        (
            config.lora.base_dtype in (None, *DTYPES),
            f"lora.base_dtype {config.lora.base_dtype!r}: choose one of {DTYPES} (default: float32)",
        ),
        (
            config.model.ref_dtype in (None, *DTYPES),
            f"model.ref_dtype {config.model.ref_dtype!r}: choose one of {DTYPES} (default: model.dtype)",
        ),
        (opt.name in OPTIMIZERS, f"optimizer.name {opt.name!r}: choose one of {OPTIMIZERS}"),
        (opt.learning_rate is None or opt.learning_rate > 0, f"optimizer.learning_rate {opt.learning_rate} <= 0"),
        (opt.warmup_steps >= 0, f"optimizer.warmup_steps {opt.warmup_steps} is negative"),
        (opt.grad_clip > 0, f"optimizer.grad_clip {opt.grad_clip} must be positive"),
        (config.checkpoint.every >= 1, f"checkpoint.every {config.checkpoint.every} must be at least 1"),
        (config.checkpoint.keep >= 1, f"checkpoint.keep {config.checkpoint.keep} must be at least 1"),
        (config.data.prefetch >= 0, f"data.prefetch {config.data.prefetch} is negative"),
        (config.log_every >= 1, f"log_every {config.log_every} must be at least 1"),
        (bool(config.cache), "cache is not set: --config.cache=<output_dir of scorers_torch.preprocess>"),
    ]
    if t.label_source == "sft":
        rules.append((False, "label_source 'sft' is now train.objective='sft' (the label source picks the winners)"))
    try:
        ModelOptions(attention=config.model.attention, remat=config.model.remat)
    except ValueError as e:
        rules.append((False, f"model: {e}"))
    try:  # the schedule's own checks: the decay's name, a cosine's length
        learning_rate_schedule(1.0, opt.warmup_steps, opt.decay, t.steps)
    except ValueError as e:
        rules.append((False, str(e)))
    return [message for ok, message in rules if not ok]


def model_options(config: ml_collections.ConfigDict) -> ModelOptions:
    """The UNet's compute dtype, parameter dtype, attention and remat from ``config.model`` (and ``config.lora``)."""
    return ModelOptions(
        dtype=jnp.dtype(config.model.dtype),
        # LoRA's frozen base may be held in the compute dtype; adapters stay fp32 (lora.py)
        param_dtype=jnp.dtype(config.lora.base_dtype or "float32") if config.lora.rank > 0 else jnp.float32,
        attention=config.model.attention,
        remat=config.model.remat,
    )


def lora_spec(config: ml_collections.ConfigDict) -> LoRASpec | None:
    """The adapters ``config.lora`` asks for; None at rank 0 (full fine-tuning)."""
    lora = config.lora
    return LoRASpec.from_names(lora.rank, lora.alpha, lora.targets) if lora.rank > 0 else None


def cache_vs_model_problems(
    config: ml_collections.ConfigDict, dataset: CacheDataset, unet: UNetConfig, devices: int, mesh_shape: tuple
) -> list[str]:
    """Mismatches between the config, the devices, the cache and the UNet."""
    base = dataset.manifest["base_model"]
    h, w, c = base["latent_shape"]
    problems = []
    if c != unet.in_channels:
        problems.append(f"the cache's latents have {c} channels, the UNet takes {unet.in_channels}")
    if base["text_dim"] != unet.cross_attention_dim[0]:
        problems.append(
            f"the cache's text states are {base['text_dim']} wide, the UNet attends to {unet.cross_attention_dim[0]}"
        )
    if (base["pooled_dim"] is not None) != (unet.addition_embed_type == "text_time"):
        problems.append("the cache is for an SDXL-style model and the UNet is not, or the other way round")
    elif base["pooled_dim"] is not None and base["pooled_dim"] != unet.pooled_text_dim:
        problems.append(f"pooled text width {base['pooled_dim']} vs the UNet's {unet.pooled_text_dim}")
    factor = 2**unet.num_upsamplers
    if h % factor or w % factor:
        problems.append(f"latent size {h}x{w} is not a multiple of {factor}")
    t = config.train
    data, fsdp = mesh_shape
    if t.global_batch % (t.grad_accum * data * fsdp):
        problems.append(
            f"train.global_batch {t.global_batch} must split into grad_accum {t.grad_accum} micro-batches "
            f"of equal shares for the {devices} devices (mesh data {data} x fsdp {fsdp})"
        )
    if t.global_batch > len(dataset):
        problems.append(f"train.global_batch {t.global_batch} is larger than the cache's {len(dataset)} usable pairs")
    return problems


def plan_run(config: ml_collections.ConfigDict, devices: list | None = None) -> RunPlan:
    """Every check that needs no weight, all problems in one ``ConfigError``."""
    devices = tuple(devices if devices is not None else jax.devices())
    problems = config_value_problems(config)

    def attempt(what: str, fn, *args):
        try:
            return fn(*args)
        except (UserError, ValueError, OSError, KeyError) as e:
            problems.append(f"{what}: {e}")
            return None

    mesh_shape = attempt("mesh", sharding.mesh_shape, config.mesh.data, config.mesh.fsdp, len(devices))
    dataset = None
    if config.cache:
        dataset = attempt("cache", CacheDataset, config.cache, config.train.label_source == "vote")
    base = config.base_model or (dataset.manifest["base_model"]["path"] if dataset else None)
    unet_dir = attempt("base_model", find_unet_dir, base) if base else None
    unet = attempt("base UNet config", UNetConfig.from_json_file, unet_dir / "config.json") if unet_dir else None
    schedule = attempt("base scheduler", NoiseSchedule.from_pipeline, base) if base else None
    label_source = None
    if dataset is not None:
        label_source = attempt(
            "train.label_source",
            LabelSource.parse,
            config.train.label_source,
            dataset.scorer_names,
            tuple(config.train.label_weights) if config.train.label_weights else None,
            dataset.score_scale() if config.train.label_source == "normalized" else None,
        )
        if unet is not None and mesh_shape is not None:
            problems += cache_vs_model_problems(config, dataset, unet, len(devices), mesh_shape)
    lora = attempt("lora", lora_spec, config) if config.lora.rank > 0 else None
    if lora is not None and unet is not None:
        attempt("lora.targets", abstract_unet, unet, ModelOptions(), lora)  # each target names a layer
    if problems:
        where = f" (cache {config.cache}, base model {base})" if config.cache else ""
        raise ConfigError(f"the train config does not fit{where}:\n  " + "\n  ".join(problems))

    pixels = float(dataset.manifest["base_model"]["resolution"])
    step_config = StepConfig(
        schedule=schedule,
        label_source=label_source,
        objective=config.train.objective,
        beta=config.train.beta,
        ref_refresh_every=config.train.ref_refresh_every,
        grad_accum=config.train.grad_accum,
        # SDXL micro-conditioning: original size, crop corner, target size, in pixels
        sdxl_time_ids=(pixels, pixels, 0.0, 0.0, pixels, pixels) if unet.pooled_text_dim else None,
        compute_dtype=config.model.dtype,
        ref_dtype=config.model.ref_dtype or config.model.dtype,
    )
    options = model_options(config)
    return RunPlan(
        config, dataset, unet_dir, unet, options, step_config, devices, mesh_shape, peak_learning_rate(config), lora
    )


@dataclasses.dataclass
class Trainer:
    """Everything a run needs, built once: the data, the sharded state, the jitted step."""

    plan: RunPlan
    mesh: jax.sharding.Mesh
    loader: PairLoader
    state: TrainState
    state_shardings: Any
    base: dict  # LoRA: the frozen UNet weights; full fine-tuning: empty
    step_fn: Any  # (state, batch) -> (state, metrics); donates the state
    eval_fn: Any  # (params, ref_params, batch, rng) -> metrics, no update
    schedule: optax.Schedule
    parameter_count: int  # trained parameters (LoRA: the adapters')

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.plan.config

    def global_batch(self, step: int) -> dict[str, jax.Array]:
        """Batch ``step``: this process's rows read from the cache, assembled into global arrays."""
        return sharding.global_batch(self.loader.batch(step), self.mesh)


def load_state(plan: RunPlan, mesh: jax.sharding.Mesh, optimizer: optax.GradientTransformation):
    """The initial train state and the frozen base, each weight tensor read once
    and put straight onto its shards. LoRA: the UNet's weights are the base and
    the trained parameters are new adapters (``lora_B`` zero: policy = base)."""
    shard = partial(sharding.param_sharding, mesh=mesh)
    graphdef, abstract = abstract_unet(plan.unet_config, plan.options, plan.lora)
    abstract_adapters, abstract_unet_params = abstract.split(nnx.LoRAParam, ...)
    unet_params = nnx.to_pure_dict(load_params(abstract_unet_params, weight_files(plan.unet_dir), shard))
    if plan.lora is None:
        params, base = unet_params, {}
    else:
        params, base = nnx.to_pure_dict(init_adapters(abstract_adapters, plan.config.train.seed, shard)), unet_params
    init = partial(init_state, optimizer=optimizer, seed=plan.config.train.seed, ref_dtype=plan.step_config.ref_dtype)
    state_shardings = sharding.state_shardings(jax.eval_shape(init, params), mesh)
    # The loaded parameters are donated: the state's policy parameters reuse their buffers.
    state = jax.jit(init, out_shardings=state_shardings, donate_argnums=0)(params)
    return graphdef, state, state_shardings, base


@dataclasses.dataclass(frozen=True)
class WithBase:
    """A jitted function whose last argument is the frozen base, bound: called
    and lowered (for FLOPs) as a function of the other arguments."""

    jitted: Any
    base: dict

    def __call__(self, *args):
        return self.jitted(*args, self.base)

    def lower(self, *args):
        return self.jitted.lower(*args, self.base)

    def compiled(self, *args) -> WithBase:
        """Compiled ahead of time for these arguments, the base still bound."""
        return dataclasses.replace(self, jitted=self.lower(*args).compile())


def parameter_count(state: TrainState) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))


def build_trainer(config: ml_collections.ConfigDict, devices: list | None = None) -> Trainer:
    plan = plan_run(config, devices)
    mesh = sharding.make_mesh(*plan.mesh_shape, plan.devices)
    optimizer, schedule = make_optimizer(config)
    graphdef, state, state_shardings, base = load_state(plan, mesh, optimizer)
    base_shardings = sharding.state_shardings(base, mesh)
    micro_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, sharding.BATCH_AXES))
    step_fn = jax.jit(
        partial(
            train_step,
            graphdef=graphdef,
            optimizer=optimizer,
            cfg=plan.step_config,
            learning_rate=schedule,
            constrain_micro=lambda tree: jax.lax.with_sharding_constraint(tree, micro_sharding),
        ),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh), base_shardings),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )
    loader = PairLoader(
        plan.dataset,
        config.train.global_batch,
        config.train.seed,
        Augment(flip=config.train.flip, caption_dropout=config.train.caption_dropout),
        jax.process_index(),
        jax.process_count(),
    )
    eval_fn = jax.jit(partial(eval_metrics, graphdef=graphdef, cfg=plan.step_config))
    return Trainer(
        plan,
        mesh,
        loader,
        state,
        state_shardings,
        base,
        WithBase(step_fn, base),
        WithBase(eval_fn, base),
        schedule,
        parameter_count(state),
    )
