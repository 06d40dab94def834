"""Our Flax UNet from diffusers weights and back: its abstract shape, its
parameters filled from safetensors (straight to their shards) or an in-memory
state dict, random weights, and ``config.json`` plus safetensors out.
Names and layouts: ``diffusers_layout``; which files: ``unet_files``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bdpo_jax.models.config import UNetConfig
from bdpo_jax.models.diffusers_layout import (
    check_names_and_shapes,
    diffusers_key,
    from_diffusers_layout,
    to_diffusers_layout,
)
from bdpo_jax.models.lora import LoRASpec, add_adapters
from bdpo_jax.models.options import ModelOptions
from bdpo_jax.models.unet import UNet2DConditionModel
from bdpo_jax.models.unet_files import WEIGHTS_NAME, WeightsError, find_unet_dir, weight_files


def to_host(array) -> np.ndarray:
    """Gathers a (possibly sharded, multi-host) array to a numpy array."""
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        from jax.experimental import multihost_utils

        array = multihost_utils.process_allgather(array, tiled=True)
    return np.asarray(array)


def diffusers_state_dict(params: nnx.State, dtype: jnp.dtype | None = None) -> dict[str, np.ndarray]:
    """Our parameters as diffusers' ``state_dict()``: torch names and layouts."""
    out = {}
    for path, variable in nnx.to_flat_state(params):
        array = to_host(variable.get_value())
        if dtype is not None:
            array = array.astype(dtype)
        out[diffusers_key(path)] = to_diffusers_layout(array)
    return out


ShardingFor = Callable[[tuple[int, ...]], jax.sharding.Sharding]


def check_shapes(abstract_params: nnx.State, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Every missing key, unexpected key and shape mismatch, reported at once (``WeightsError``)."""
    expected = {diffusers_key(path): variable.shape for path, variable in nnx.to_flat_state(abstract_params)}
    check_names_and_shapes(expected, shapes)


def fill_state(
    abstract: nnx.State,
    value_for: Callable[[tuple, nnx.Variable], np.ndarray],
    sharding_for: ShardingFor | None = None,
) -> nnx.State:
    """Each variable's value from ``value_for(path, abstract_variable)`` (our
    layout), in the abstract's dtype, one at a time; with ``sharding_for(shape)``
    it goes straight to its shards (each device gets only its slice), else onto
    the default device."""
    filled = []
    for path, variable in nnx.to_flat_state(abstract):
        value = np.asarray(value_for(path, variable), variable.dtype)
        if sharding_for is None:
            array = jnp.asarray(value)
        else:
            array = jax.make_array_from_callback(value.shape, sharding_for(value.shape), value.__getitem__)
        filled.append((path, variable.replace(array)))
    return nnx.from_flat_state(filled)


def fill_params(
    abstract_params: nnx.State,
    read: Callable[[str], np.ndarray],
    sharding_for: ShardingFor | None = None,
) -> nnx.State:
    """Each parameter read by its diffusers name, in our layout and dtype (see ``fill_state``)."""
    return fill_state(
        abstract_params, lambda path, _: from_diffusers_layout(np.asarray(read(diffusers_key(path)))), sharding_for
    )


def params_from_diffusers(
    abstract_params: nnx.State, tensors: Mapping[str, np.ndarray], sharding_for: ShardingFor | None = None
) -> nnx.State:
    """Fills an abstract parameter state from an in-memory diffusers state dict.
    Values are cast to the abstract state's dtype (fp16 weights load as fp32)."""
    check_shapes(abstract_params, {key: tuple(value.shape) for key, value in tensors.items()})
    return fill_params(abstract_params, tensors.__getitem__, sharding_for)


def load_params(
    abstract_params: nnx.State, files: Mapping[str, Path], sharding_for: ShardingFor | None = None
) -> nnx.State:
    """Fills an abstract parameter state from safetensors files: names and
    shapes checked from the headers first, then one tensor at a time from the
    memory-mapped file to its device(s)."""
    check_shapes(abstract_params, read_shapes(files))
    with SafetensorsReader(files) as reader:
        return fill_params(abstract_params, reader.read, sharding_for)


class SafetensorsReader:
    """Tensors by name from safetensors files, each read when asked (bf16 through
    ml_dtypes); a file that cannot be read is a ``WeightsError`` naming it."""

    def __init__(self, files: Mapping[str, Path]):
        self.files, self.open = files, {}

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.open.values():
            handle.__exit__(None, None, None)
        self.open.clear()

    def _handle(self, file: Path):
        from safetensors import safe_open

        if file not in self.open:
            try:
                self.open[file] = safe_open(file, framework="flax").__enter__()
            except Exception as e:  # safetensors raises its own error types, and OSError
                raise WeightsError(f"cannot read weights file {file}: {e}. Download or convert it again.") from e
        return self.open[file]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handle(self.files[key]).get_slice(key).get_shape())

    def read(self, key: str) -> np.ndarray:
        with jax.default_device(jax.local_devices(backend="cpu")[0]):  # host memory, never an accelerator
            return np.asarray(self._handle(self.files[key]).get_tensor(key))


def read_shapes(files: Mapping[str, Path]) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from the files' headers, no tensor read."""
    with SafetensorsReader(files) as reader:
        return {key: reader.shape(key) for key in files}


def read_safetensors(files: Mapping[str, Path]) -> dict[str, np.ndarray]:
    """Every tensor to host numpy."""
    with SafetensorsReader(files) as reader:
        return {key: reader.read(key) for key in files}


def read_unet(path: str | os.PathLike, variant: str | None = None) -> tuple[UNetConfig, dict[str, np.ndarray]]:
    """Config and diffusers-named tensors of a UNet (or pipeline) directory."""
    unet_dir = find_unet_dir(path)
    config = UNetConfig.from_json_file(unet_dir / "config.json")
    return config, read_safetensors(weight_files(unet_dir, variant))


class _ShapeOnlyRngs:
    """Stands in for ``nnx.Rngs`` when only shapes are wanted. ``nnx.Rngs``
    counts its draws in a Variable, and under ``eval_shape`` each count update
    costs time linear in the trace so far (flax 0.12): minutes for SDXL,
    against a second with one fixed key."""

    def __init__(self):
        self._key = jax.random.key(0)

    def params(self) -> jax.Array:
        return self._key


def abstract_unet(
    config: UNetConfig, opts: ModelOptions = ModelOptions(), lora: LoRASpec | None = None
) -> tuple[nnx.GraphDef, nnx.State]:
    """The UNet's structure and parameter shapes, without allocating them; with
    ``lora``, adapters on the layers it targets (``nnx.LoRAParam``, fp32)."""

    def build() -> UNet2DConditionModel:
        model = UNet2DConditionModel(config, opts, rngs=_ShapeOnlyRngs())
        if lora is not None:
            add_adapters(model, lora, _ShapeOnlyRngs())
        return model

    return nnx.split(nnx.eval_shape(build))


def random_unet(
    config: UNetConfig, opts: ModelOptions = ModelOptions(), seed: int = 0, std: float = 1.0
) -> UNet2DConditionModel:
    """A UNet with random weights (LeCun-normal kernels, unit norms, zero biases),
    drawn with numpy: building under a trace or op by op costs far more."""
    rng = np.random.default_rng(seed)
    graphdef, abstract = abstract_unet(config, opts)

    def value_for(path: tuple, variable: nnx.Variable) -> np.ndarray:
        shape, leaf = variable.shape, path[-1]
        if leaf == "kernel":
            return rng.standard_normal(shape, np.float32) * (std / np.sqrt(fan_in(shape)))
        return np.full(shape, 1.0 if leaf == "scale" else 0.0, np.float32)

    return nnx.merge(graphdef, fill_state(abstract, value_for))


def fan_in(kernel_shape: tuple[int, ...]) -> int:
    """Inputs per output of a linear (IO) or conv (HWIO) kernel."""
    return int(np.prod(kernel_shape[:-1]))


def load_unet(
    path: str | os.PathLike,
    opts: ModelOptions = ModelOptions(),
    variant: str | None = None,
    sharding_for: ShardingFor | None = None,
) -> UNet2DConditionModel:
    """A diffusers UNet (or pipeline) directory as our Flax UNet; with
    ``sharding_for(shape)``, each parameter lies split over its devices."""
    unet_dir = find_unet_dir(path)
    config = UNetConfig.from_json_file(unet_dir / "config.json")
    graphdef, abstract = abstract_unet(config, opts)
    try:
        params = load_params(abstract, weight_files(unet_dir, variant), sharding_for)
    except WeightsError as e:
        raise WeightsError(f"{unet_dir}: {e}") from None
    return nnx.merge(graphdef, params)


def save_unet(
    config: UNetConfig,
    params: nnx.State,
    out_dir: str | os.PathLike,
    dtype: jnp.dtype = jnp.float32,
    variant: str | None = None,
) -> Path:
    """Writes ``config.json`` and safetensors that diffusers'
    ``UNet2DConditionModel.from_pretrained(out_dir)`` loads. Returns the weights file.

    Only process 0 writes; every process must call it (gathering is collective).
    """
    state_dict = diffusers_state_dict(params, dtype)
    out_dir = Path(out_dir)
    weights = out_dir / (f"{WEIGHTS_NAME}.{variant}.safetensors" if variant else f"{WEIGHTS_NAME}.safetensors")
    if jax.process_index() == 0:
        from safetensors.flax import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config.to_diffusers(), indent=2, sort_keys=True) + "\n")
        tmp = weights.with_suffix(".tmp")
        with jax.default_device(jax.local_devices(backend="cpu")[0]):
            save_file({k: jnp.asarray(v) for k, v in state_dict.items()}, tmp, metadata={"format": "pt"})
        tmp.replace(weights)
    return weights
