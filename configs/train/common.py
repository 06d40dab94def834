"""Settings every train config shares; locked (``configs/lock.py``): a config file sets only these keys."""

import ml_collections
from ml_collections.config_dict import placeholder

from configs.lock import locked


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.cache = placeholder(str)  # output_dir of scorers_torch.preprocess
    config.base_model = placeholder(str)  # diffusers pipeline dir; default: the one the cache names
    config.distributed = False  # jax.distributed.initialize() first (multi-host)

    config.model = ml_collections.ConfigDict()
    config.model.dtype = "bfloat16"  # compute dtype; parameters stay fp32
    config.model.attention = "auto"  # "xla" | "cudnn" | "auto"
    config.model.remat = "none"  # "none" | "full" | "save_dots"
    # The reference parameters' dtype; default: the compute dtype, so that the policy and the
    # reference see the same weights and the implicit reward is exactly 0 where they are equal.
    config.model.ref_dtype = placeholder(str)
    # The stacked forward's backward: "recompute" the policy's forward in it (x1.25 FLOPs, within 10% of
    # two forwards' memory), or keep its "residuals" (two forwards' FLOPs, on TPU 2.6x: bench/RESULTS.md).
    config.model.reference_backward = "recompute"

    # LoRA (rank > 0): adapters trained on a frozen base; the reference is the base plus a
    # frozen copy of the adapters, so a refresh copies only them. Rank 0: full fine-tuning.
    config.lora = ml_collections.ConfigDict()
    config.lora.rank = 0
    config.lora.alpha = placeholder(float)  # the adapters' output is scaled by alpha / rank; default: rank
    # Layer names as diffusers names them (a dotted suffix, as peft's target_modules), or the groups
    # "attention" (to_q, to_k, to_v, to_out.0: diffusers' DPO example), "feed_forward", "resnet".
    config.lora.targets = ("attention",)
    config.lora.base_dtype = placeholder(str)  # the frozen base's dtype (default float32; model.dtype halves it)

    config.train = ml_collections.ConfigDict()
    config.train.steps = 2000
    config.train.global_batch = 128  # pairs per optimizer step, over all devices and micro-batches
    config.train.grad_accum = 1
    config.train.objective = "dpo"  # or "sft": diffusion loss on each pair's winner (by the label source)
    config.train.beta = 5000.0
    config.train.ref_refresh_every = 100  # T; 0 keeps the base model as reference (Diffusion-DPO)
    # vote | human | scorer:<name> | random_scorer | weighted_sum | normalized
    config.train.label_source = "vote"
    config.train.label_weights = placeholder(tuple)  # weighted_sum: one weight per scorer (default uniform)
    config.train.seed = 0
    config.train.flip = True
    config.train.caption_dropout = 0.0

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adamw"  # or "adafactor"
    config.optimizer.learning_rate = placeholder(float)  # default: 1e-8 per pair of train.global_batch (Diffusion-DPO)
    config.optimizer.warmup_steps = 200
    config.optimizer.decay = "constant"  # after the warmup: "constant" (Diffusion-DPO's) or "cosine" (0 at the end)
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.weight_decay = 1e-2
    config.optimizer.grad_clip = 1.0

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = 1
    config.mesh.fsdp = -1  # all devices the data axis leaves

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every = 100
    config.checkpoint.keep = 3
    config.checkpoint.async_save = True

    config.data = ml_collections.ConfigDict()
    config.data.prefetch = 2  # batches built ahead on a background thread

    config.log_every = 25  # metrics are read from the device one step late, every this many steps
    return locked(config)
