"""Adapter weights: their initial values, merged into the base, and out to
diffusers' LoRA file.

``pytorch_lora_weights.safetensors`` is what ``pipeline.save_lora_weights``
writes and ``pipeline.load_lora_weights`` reads: ``unet.<module path>.lora_A
.weight`` and ``.lora_B.weight`` in torch's layouts (peft's names). Loaders
disagree on where alpha lives (diffusers: a peft config in the file's
metadata; kohya-style loaders: an ``.alpha`` key per module; with neither,
alpha = rank), so the scale alpha / rank is folded into ``lora_B`` on export
and the metadata says alpha = rank: the file means W + B A to every loader.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
from flax import nnx, traverse_util

from bdpo_jax.models.diffusers_layout import diffusers_key, to_diffusers_layout
from bdpo_jax.models.lora import LoRASpec, dotted
from bdpo_jax.models.weights import ShardingFor, fan_in, fill_state, params_from_diffusers, to_host

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
PREFIX = "unet."  # the pipeline component the adapters belong to, as diffusers prefixes them


def init_adapters(abstract_adapters: nnx.State, seed: int, sharding_for: ShardingFor | None = None) -> nnx.State:
    """``lora_A`` kaiming-uniform as peft draws it (bound 1/sqrt(fan_in)),
    ``lora_B`` zero, so that the adapted UNet starts as the base; drawn with
    numpy from ``seed``, the same on every process."""
    rng = np.random.default_rng(seed)

    def value_for(path: tuple, variable: nnx.Variable) -> np.ndarray:
        if path[-2] == "lora_B":
            return np.zeros(variable.shape, np.float32)
        bound = 1.0 / np.sqrt(fan_in(variable.shape))
        return rng.uniform(-bound, bound, variable.shape).astype(np.float32)

    return fill_state(abstract_adapters, value_for, sharding_for)


def _flat(tree: Mapping) -> dict[tuple, np.ndarray]:
    """Leaves by path, on the host; list indices as ints (orbax restores them as strings)."""
    index = lambda key: int(key) if isinstance(key, str) and key.isdigit() else key  # noqa: E731
    flat = traverse_util.flatten_dict(dict(tree))
    return {tuple(map(index, path)): np.asarray(to_host(leaf)) for path, leaf in flat.items()}


def adapted_layers(adapters: Mapping) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """(lora_A kernel, lora_B kernel) by the adapted layer's path, from a pure dict of adapters."""
    flat = _flat(adapters)
    return {path[:-2]: (a, flat[(*path[:-2], "lora_B", "kernel")]) for path, a in flat.items() if path[-2] == "lora_A"}


def kernel_delta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The kernel change ``x -> B(A(x))`` makes, in our layout: A B for linears;
    for convs, A's kernel with B's 1x1 kernel applied to its output channels."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return a @ b if a.ndim == 2 else np.einsum("hwir,ro->hwio", a, b[0, 0])


def merge_adapters(base: Mapping, adapters: Mapping, scale: float) -> dict:
    """The base parameters (a pure dict) with each adapted layer's kernel W
    replaced by W + scale * delta: the UNet the adapters compute, as plain layers."""
    merged = _flat(base)
    for layer, (a, b) in adapted_layers(adapters).items():
        kernel = merged[(*layer, "kernel")]
        merged[(*layer, "kernel")] = (kernel.astype(np.float64) + scale * kernel_delta(a, b)).astype(kernel.dtype)
    return traverse_util.unflatten_dict(merged)


def lora_state_dict(adapters: Mapping, scale: float) -> dict[str, np.ndarray]:
    """The adapters under diffusers' LoRA file keys and torch layouts, in fp32, ``scale`` folded into lora_B."""
    out = {}
    for path, array in _flat(adapters).items():
        array = array.astype(np.float32) * (np.float32(scale) if path[-2] == "lora_B" else np.float32(1))
        out[PREFIX + diffusers_key(path)] = to_diffusers_layout(array)
    return out


def adapters_from_lora_state_dict(abstract_adapters: nnx.State, tensors: Mapping[str, np.ndarray]) -> nnx.State:
    """Adapters from a peft/diffusers LoRA state dict (``unet.`` prefix or none),
    every key and shape checked; they compute with the scale of the spec they are
    merged with (a file of ours: alpha = rank)."""
    return params_from_diffusers(abstract_adapters, {k.removeprefix(PREFIX): v for k, v in tensors.items()})


def save_lora_weights(adapters: Mapping, spec: LoRASpec, out_dir: str | Path, provenance: dict | None = None) -> Path:
    """Writes ``out_dir/pytorch_lora_weights.safetensors`` for diffusers'
    ``load_lora_weights(out_dir)``; ``provenance`` (the base model, the run) goes
    into the file's metadata under "bdpo". Only process 0 writes; every process
    must call it (gathering a sharded adapter is collective)."""
    state_dict = lora_state_dict(adapters, spec.scale)
    out_dir = Path(out_dir)
    path = out_dir / LORA_WEIGHTS_NAME
    if jax.process_index() != 0:
        return path
    layers = sorted({key.removeprefix(PREFIX).split(".lora_")[0] for key in state_dict})
    peft_config = {"r": spec.rank, "lora_alpha": spec.rank, "target_modules": layers}  # alpha folded into lora_B
    bdpo = {"rank": spec.rank, "alpha": spec.alpha, "targets": list(spec.targets), "scale_folded_into_lora_B": True}
    metadata = {
        "format": "pt",
        "lora_adapter_metadata": json.dumps({PREFIX + k: v for k, v in peft_config.items()}, sort_keys=True),
        "bdpo": json.dumps(bdpo | (provenance or {}), sort_keys=True),
    }
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state_dict, tmp, metadata=metadata)
    tmp.replace(path)
    return path


def adapted_paths(adapters: Mapping) -> list[str]:
    """The dotted paths of the layers a pure dict of adapters adapts."""
    return [dotted(layer) for layer in adapted_layers(adapters)]
