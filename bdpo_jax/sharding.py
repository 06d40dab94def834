"""The device mesh and how arrays lie on it.

Mesh axes ("data", "fsdp"): the batch is split over both; parameters and
optimizer state are split FSDP-style over "fsdp" by the rule below, so each
device holds 1/fsdp of every large tensor and XLA gathers them per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bdpo_jax.errors import UserError

BATCH_AXES = ("data", "fsdp")
# Tensors smaller than this are replicated: splitting them saves little memory and costs a collective.
MIN_SHARDED_SIZE = 2**14


class MeshError(UserError):
    """The mesh's axes do not cover the devices."""


def mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
    """(data, fsdp) with -1 resolved: what the other axis leaves of the devices."""
    if data == -1 and fsdp == -1:
        raise MeshError("mesh.data and mesh.fsdp are both -1: set one of them")
    if data == -1:
        data = num_devices // fsdp if fsdp > 0 and num_devices % fsdp == 0 else 0
    if fsdp == -1:
        fsdp = num_devices // data if data > 0 and num_devices % data == 0 else 0
    if data < 1 or fsdp < 1 or data * fsdp != num_devices:
        raise MeshError(f"mesh data x fsdp must cover the {num_devices} devices; the config asks for {data} x {fsdp}")
    return data, fsdp


def make_mesh(data: int = 1, fsdp: int = -1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp") mesh over all devices; -1 takes what the other axis leaves."""
    devices = list(devices if devices is not None else jax.devices())
    data, fsdp = mesh_shape(data, fsdp, len(devices))
    return Mesh(np.array(devices).reshape(data, fsdp), BATCH_AXES)


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
    """Split the largest dimension that divides evenly over "fsdp"; replicate small or indivisible tensors."""
    if fsdp_size == 1 or int(np.prod(shape)) < MIN_SHARDED_SIZE:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def param_sharding(shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
    """Where a state tensor of this shape lies (parameters, reference, optimizer moments alike)."""
    return NamedSharding(mesh, fsdp_spec(tuple(shape), mesh.shape["fsdp"]))


def state_shardings(abstract_state, mesh: Mesh):
    """NamedShardings for a pytree of arrays (params, optimizer state, ...)."""
    return jax.tree.map(lambda leaf: param_sharding(getattr(leaf, "shape", ()), mesh), abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Each process's slice of the batch, assembled into global arrays split over the batch axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def batch_parallel(fn: Callable[..., jax.Array], *arrays: jax.Array) -> jax.Array:
    """``fn`` run by each device on its share of the arrays' leading (batch) axis, under
    the mesh the step is traced with (``jax.set_mesh``): a Pallas kernel is opaque to
    XLA's partitioner, which would gather the whole batch onto every device. Without
    a mesh, or with a batch the mesh does not split, ``fn`` runs on the whole arrays."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return fn(*arrays)
    shards = int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))
    if shards == 1 or arrays[0].shape[0] % shards:
        return fn(*arrays)
    spec = P(BATCH_AXES)
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * len(arrays), out_specs=spec, check_vma=False)(*arrays)
