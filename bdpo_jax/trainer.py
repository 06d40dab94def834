"""A run, checked and then built: ``check`` validates every config value
against itself, the devices, the cache's manifest and the base model's
config.json and lists every problem in one error, with no weight and no cache
array read (``bdpo_jax.plan`` starts here); ``build`` then opens the cache,
loads each weight tensor straight onto its shards and jits the step. With
``config.lora.rank`` > 0 the UNet's weights are a frozen base, loaded once (in
``lora.base_dtype``), and the state holds adapters.
"""

from __future__ import annotations

import dataclasses
import functools
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from bdpo_jax import cache as cache_format
from bdpo_jax import sharding
from bdpo_jax.data import Augment, CacheDataset, PairLoader
from bdpo_jax.errors import UserError
from bdpo_jax.labels import SCALED, LabelSource, decided_rows
from bdpo_jax.models import ModelOptions, UNetConfig, abstract_unet, load_params
from bdpo_jax.models.attention import check_attention
from bdpo_jax.models.lora import LoRASpec
from bdpo_jax.models.lora_weights import init_adapters
from bdpo_jax.models.unet_files import find_unet_dir, weight_files
from bdpo_jax.objective import OBJECTIVES
from bdpo_jax.optim import OPTIMIZERS, OptimizerSettings, learning_rate_schedule, make_optimizer
from bdpo_jax.schedule import NoiseSchedule
from bdpo_jax.step import REFERENCE_BACKWARDS, StepConfig, TrainState, init_state, train_step

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(UserError):
    """The train config does not fit itself, the devices, the cache or the base model."""


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a checked config resolves to; nothing in it holds a weight or a cache array."""

    config: ml_collections.ConfigDict
    manifest: dict | None  # the cache's manifest; None when planning without a cache
    unet_dir: Path | None  # None when planning from a UNet config alone
    unet_config: UNetConfig
    options: ModelOptions
    step_config: StepConfig
    devices: tuple
    mesh_shape: tuple[int, int]  # (data, fsdp)
    optimizer: OptimizerSettings
    sizes: dict  # the cache schema's sizes (bdpo_jax.cache.dims): latents, scorers, text
    lora: LoRASpec | None = None  # None: full fine-tuning

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """One global batch's arrays as the loader gives them (the cache's dtypes)."""
        rows = self.config.train.global_batch
        return {
            f.name: jax.ShapeDtypeStruct((rows, *cache_format.row_shape(f, self.sizes)), f.dtype)
            for f in cache_format.fields_for(self.sizes, in_batch=True)
        }


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
        (
            config.model.reference_backward in REFERENCE_BACKWARDS,
            f"model.reference_backward {config.model.reference_backward!r}: choose one of {REFERENCE_BACKWARDS}",
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
    config: ml_collections.ConfigDict, base: dict, unet: UNetConfig, devices: int, mesh_shape: tuple
) -> list[str]:
    """Mismatches between the config, the devices, the cache's base model entry and the UNet."""
    h, w, c = base["latent_shape"]
    problems = []
    if c != unet.in_channels:
        problems.append(f"the cache's latents have {c} channels, the UNet takes {unet.in_channels}")
    if base["text_dim"] != unet.cross_attention_dim[0]:
        problems.append(
            f"the cache's text states are {base['text_dim']} wide, the UNet attends to {unet.cross_attention_dim[0]}"
        )
    if (base.get("pooled_dim") is not None) != (unet.addition_embed_type == "text_time"):
        problems.append("the cache is for an SDXL-style model and the UNet is not, or the other way round")
    elif base.get("pooled_dim") is not None and base["pooled_dim"] != unet.pooled_text_dim:
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
    return problems


def base_model_entry(unet: UNetConfig, resolution: int | None = None) -> dict:
    """A cache manifest's ``base_model`` entry for a UNet that has no cache yet (planning):
    latents of its ``sample_size`` (or ``resolution`` / 8), CLIP's 77 tokens."""
    size = unet.sample_size if resolution is None else resolution // 8
    h, w = (size, size) if isinstance(size, int) else size
    return {
        "latent_shape": [h, w, unet.in_channels],
        "text_length": 77,
        "text_dim": unet.cross_attention_dim[0],
        "pooled_dim": unet.pooled_text_dim,
        "resolution": 8 * h,
    }


def planning_scorers(label_source: str, count: int) -> list[str]:
    """Stand-in scorer names where no cache says them (the scorer a label source names among them)."""
    kind, _, name = label_source.partition(":")
    names = [name] if kind == "scorer" and name else []
    return names + [f"scorer{i}" for i in range(max(count - len(names), 0))]


def check(
    config: ml_collections.ConfigDict,
    devices: list | None = None,
    unet_config: UNetConfig | None = None,
    num_scorers: int = 4,
) -> RunPlan:
    """Every check that needs no weight and no cache array, all problems in one ``ConfigError``.
    ``unet_config`` (planning): the UNet to plan for where no base model is given; without a
    cache, latents, text and ``num_scorers`` scorers are those of the UNet's own resolution."""
    devices = tuple(devices if devices is not None else jax.devices())
    planning = unet_config is not None
    problems = [p for p in config_value_problems(config) if not (planning and p.startswith("cache is not set"))]

    def attempt(what: str, fn, *args):
        try:
            return fn(*args)
        except (UserError, ValueError, OSError, KeyError) as e:
            problems.append(f"{what}: {e}")
            return None

    mesh_shape = attempt("mesh", sharding.mesh_shape, config.mesh.data, config.mesh.fsdp, len(devices))
    manifest = attempt("cache", cache_format.read_manifest, config.cache) if config.cache else None
    base = config.base_model or (manifest["base_model"]["path"] if manifest else None)
    unet_dir = attempt("base_model", find_unet_dir, base) if base else None
    unet = unet_config
    if unet_dir is not None:
        unet = attempt("base UNet config", UNetConfig.from_json_file, unet_dir / "config.json")
    if base:
        schedule = attempt("base scheduler", NoiseSchedule.from_pipeline, base)
    else:  # planning: the schedule's numbers do not change the compiled program
        schedule = NoiseSchedule.from_config({"_class_name": "DDPMScheduler"})
    scorer_names = (
        [s["name"] for s in manifest["scorers"]]
        if manifest
        else planning_scorers(config.train.label_source, num_scorers)
    )
    # 'normalized' and 'veto' scale by each scorer's spread over the cache: read with the arrays, at build
    label_source = attempt(
        "train.label_source",
        LabelSource.parse,
        config.train.label_source,
        scorer_names,
        tuple(config.train.label_weights) if config.train.label_weights else None,
        (1.0,) * len(scorer_names) if config.train.label_source.partition(":")[0] in SCALED else None,
    )
    base_entry = manifest["base_model"] if manifest else (base_model_entry(unet) if unet else None)
    if unet is not None and mesh_shape is not None and base_entry is not None:
        problems += cache_vs_model_problems(config, base_entry, unet, len(devices), mesh_shape)
    platform = devices[0].platform
    if unet is not None and config.model.dtype in DTYPES:  # a forced kernel must run on the devices' platform
        head_dims = sorted({c // h for c, h in zip(unet.block_out_channels, unet.num_attention_heads, strict=True)})
        before = len(problems)
        for head_dim in head_dims:
            if len(problems) == before:  # one problem, for the first head dim it cannot run
                attempt(
                    "model.attention", check_attention, config.model.attention, platform, config.model.dtype, head_dim
                )
    lora = attempt("lora", lora_spec, config) if config.lora.rank > 0 else None
    if lora is not None and unet is not None:
        attempt("lora.targets", abstract_unet, unet, ModelOptions(), lora)  # each target names a layer
    if problems:
        where = f" (cache {config.cache}, base model {base})" if config.cache else ""
        raise ConfigError(f"the train config does not fit{where}:\n  " + "\n  ".join(problems))

    pixels = float(base_entry["resolution"])
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
        reference_backward=config.model.reference_backward,
    )
    options = dataclasses.replace(model_options(config), platform=platform)
    return RunPlan(
        config,
        manifest,
        unet_dir,
        unet,
        options,
        step_config,
        devices,
        mesh_shape,
        OptimizerSettings.from_config(config),
        cache_format.dims(base_entry, len(scorer_names)),
        lora,
    )


@dataclasses.dataclass
class Trainer:
    """Everything a run needs, built once: the data, the sharded state, the jitted step."""

    plan: RunPlan
    dataset: CacheDataset
    mesh: jax.sharding.Mesh
    loader: PairLoader
    state: TrainState
    state_shardings: Any
    base: dict  # LoRA: the frozen UNet weights; full fine-tuning: empty
    step_fn: Any  # (state, batch) -> (state, metrics); donates the state
    schedule: optax.Schedule
    parameter_count: int  # trained parameters (LoRA: the adapters')

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.plan.config

    def global_batch(self, step: int) -> dict[str, jax.Array]:
        """Batch ``step``: this process's rows read from the cache, assembled into global arrays."""
        return sharding.global_batch(self.loader.batch(step), self.mesh)


def split_model(plan: RunPlan) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """The UNet's structure, its adapters' shapes (empty without LoRA) and its weights' shapes."""
    graphdef, abstract = abstract_unet(plan.unet_config, plan.options, plan.lora)
    adapters, unet_params = abstract.split(nnx.LoRAParam, ...)
    return graphdef, adapters, unet_params


def initial_state_fn(plan: RunPlan, optimizer: optax.GradientTransformation):
    """params -> the initial train state (reference = policy, optimizer state, RNG)."""
    return partial(init_state, optimizer=optimizer, seed=plan.config.train.seed, ref_dtype=plan.step_config.ref_dtype)


def load_state(plan: RunPlan, mesh: jax.sharding.Mesh, optimizer: optax.GradientTransformation):
    """The initial train state and the frozen base, each weight tensor read once
    and put straight onto its shards. LoRA: the UNet's weights are the base and
    the trained parameters are new adapters (``lora_B`` zero: policy = base)."""
    shard = partial(sharding.param_sharding, mesh=mesh)
    graphdef, abstract_adapters, abstract_unet_params = split_model(plan)
    unet_params = nnx.to_pure_dict(load_params(abstract_unet_params, weight_files(plan.unet_dir), shard))
    if plan.lora is None:
        params, base = unet_params, {}
    else:
        params, base = nnx.to_pure_dict(init_adapters(abstract_adapters, plan.config.train.seed, shard)), unet_params
    init = initial_state_fn(plan, optimizer)
    state_shardings = sharding.state_shardings(jax.eval_shape(init, params), mesh)
    # The loaded parameters are donated: the state's policy parameters reuse their buffers.
    state = jax.jit(init, out_shardings=state_shardings, donate_argnums=0)(params)
    return graphdef, state, state_shardings, base


def abstract_state(plan: RunPlan, mesh: jax.sharding.Mesh, optimizer: optax.GradientTransformation):
    """``load_state``'s results as shapes on their shardings, no weight read (ahead-of-time compiles)."""
    graphdef, adapters, unet_params = split_model(plan)
    shapes = partial(jax.tree.map, lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype))
    unet_params = shapes(nnx.to_pure_dict(unet_params))
    params, base = (unet_params, {}) if plan.lora is None else (shapes(nnx.to_pure_dict(adapters)), unet_params)
    state = jax.eval_shape(initial_state_fn(plan, optimizer), params)
    state_shardings = sharding.state_shardings(state, mesh)
    on = partial(jax.tree.map, lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s))
    return graphdef, on(state, state_shardings), state_shardings, on(base, sharding.state_shardings(base, mesh))


def jitted_step(
    plan: RunPlan,
    mesh: jax.sharding.Mesh,
    graphdef: nnx.GraphDef,
    state_shardings: Any,
    base_shardings: Any,
    reuse: bool = True,
):
    """The train step as the run compiles it: (state, batch, base) -> (state, metrics),
    over the mesh, the state donated. Traced under the mesh, so that kernels that
    split the batch by hand (splash attention) see it.

    One jitted function per program in a process: a run that asks for the step of
    an earlier one (a resume, another draw of the small world) gets the same
    function, which jax has traced and compiled already. What the program is made
    of is the key: the step's and the optimizer's settings, the model's structure,
    the mesh and the shardings; the weights and the data are its arguments.
    ``reuse=False``: a function of its own, released with it."""
    state_leaves, state_tree = jax.tree.flatten(state_shardings)
    base_leaves, base_tree = jax.tree.flatten(base_shardings)
    make = _reused_step_program if reuse else step_program
    return make(
        plan.step_config, plan.optimizer, graphdef, mesh, state_tree, tuple(state_leaves), base_tree, tuple(base_leaves)
    )


def step_program(
    step_config: StepConfig,
    optimizer_settings: OptimizerSettings,
    graphdef: nnx.GraphDef,
    mesh: jax.sharding.Mesh,
    state_tree,
    state_leaves: tuple,
    base_tree,
    base_leaves: tuple,
):
    """``jitted_step``'s function of its key (the shardings as flattened trees, so that the key hashes)."""
    state_shardings = jax.tree.unflatten(state_tree, state_leaves)
    optimizer, schedule = make_optimizer(optimizer_settings)
    micro_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, sharding.BATCH_AXES))
    step = partial(
        train_step,
        graphdef=graphdef,
        optimizer=optimizer,
        cfg=step_config,
        learning_rate=schedule,
        constrain_micro=lambda tree: jax.lax.with_sharding_constraint(tree, micro_sharding),
    )

    def step_on_mesh(state, batch, base):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return step(state, batch, base)

    return jax.jit(
        step_on_mesh,
        in_shardings=(state_shardings, sharding.batch_sharding(mesh), jax.tree.unflatten(base_tree, base_leaves)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


_reused_step_program = functools.lru_cache(maxsize=8)(step_program)


@dataclasses.dataclass(frozen=True)
class WithBase:
    """A jitted (or compiled) function whose last argument is the frozen base, bound: called
    and lowered as a function of the other arguments."""

    jitted: Any
    base: dict

    def __call__(self, *args):
        return self.jitted(*args, self.base)

    def lower(self, *args):
        return self.jitted.lower(*args, self.base)


def parameter_count(state: TrainState) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))


def open_dataset(plan: RunPlan) -> tuple[CacheDataset, RunPlan]:
    """The cache's arrays, checked as they open, before any weight is read; 'normalized' and 'veto'
    labels get each scorer's spread over the cache, and a rule that drops pairs leaves them out."""
    config = plan.config
    dataset = CacheDataset(config.cache, config.train.label_source == "vote")
    source = plan.step_config.label_source
    if source.kind in SCALED:
        source = dataclasses.replace(source, score_scale=dataset.score_scale(SCALED[source.kind]))
        plan = dataclasses.replace(plan, step_config=dataclasses.replace(plan.step_config, label_source=source))
    if source.drops_pairs:
        dataset.keep_only(partial(decided_rows, source=source))
    if config.train.global_batch > len(dataset):
        kept = f" that label_source {config.train.label_source!r} keeps" if source.drops_pairs else ""
        raise ConfigError(
            f"train.global_batch {config.train.global_batch} is larger than the cache's {len(dataset)} usable "
            f"pairs{kept}"
        )
    return dataset, plan


def build(plan: RunPlan) -> Trainer:
    """The checked run made real: the cache opened, the weights loaded onto their shards, the step jitted."""
    config = plan.config
    dataset, plan = open_dataset(plan)
    mesh = sharding.make_mesh(*plan.mesh_shape, plan.devices)
    optimizer, schedule = make_optimizer(plan.optimizer)
    graphdef, state, state_shardings, base = load_state(plan, mesh, optimizer)
    step_fn = jitted_step(plan, mesh, graphdef, state_shardings, sharding.state_shardings(base, mesh))
    loader = PairLoader(
        dataset,
        config.train.global_batch,
        config.train.seed,
        Augment(flip=config.train.flip, caption_dropout=config.train.caption_dropout),
        jax.process_index(),
        jax.process_count(),
    )
    return Trainer(
        plan,
        dataset,
        mesh,
        loader,
        state,
        state_shardings,
        base,
        WithBase(step_fn, base),
        schedule,
        parameter_count(state),
    )


def build_trainer(config: ml_collections.ConfigDict, devices: list | None = None) -> Trainer:
    """``check``, then ``build``."""
    return build(check(config, devices))
