"""One process of the two-process test: ``python distributed_worker.py PORT INDEX CACHE OUT``.

Two processes with two CPU devices each join through jax.distributed (gloo
collectives) and run the same train steps as one process with four devices.
"""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")


def main(port: str, index: str, cache: str, out: str) -> None:
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(index))
    import jax.numpy as jnp

    from bdpo_jax.train import build_trainer
    from configs.train import tiny

    config = tiny.get_config()
    config.cache = cache
    config.train.global_batch = 4
    config.train.ref_refresh_every = 2
    trainer = build_trainer(config)
    assert jax.device_count() == 4 and jax.local_device_count() == 2
    sum_of_squares = jax.jit(lambda p: sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in jax.tree.leaves(p)))
    state, losses = trainer.state, []
    for step in range(2):
        state, metrics = trainer.step_fn(state, trainer.global_batch(step))
        losses.append(float(metrics["loss"]))
    result = {"losses": losses, "params_sum_of_squares": float(sum_of_squares(state.params))}
    if jax.process_index() == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
