"""The memory figures read from XLA's dumped buffer assignment, where the
compile is stopped before code generation, are the compiled executable's."""

import json
import random
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from bdpo_jax.xla_memory import (
    CompileKilled,
    MemoryAnalysis,
    buffer_assignment_dump,
    largest_at_peak,
    peak_live_bytes,
    until_buffer_assignment,
)

# A train-step-like function: donated parameters updated in place, temporaries
# for the activations. It compiles once without a dump (its figures written out),
# then again with one, and waits to be stopped.
_CHILD = """
import json, sys, time
import jax, jax.numpy as jnp

def step(w, x):
    grad = jax.grad(lambda w: jnp.sum(jnp.tanh(jnp.tanh(x @ w) @ w.T) ** 2))(w)
    return w - 0.1 * grad, jnp.sum(grad)

args = jax.ShapeDtypeStruct((64, 128), jnp.float32), jax.ShapeDtypeStruct((256, 64), jnp.float32)
lowered = jax.jit(step, donate_argnums=(0,)).lower(*args)
m = lowered.compile().memory_analysis()
with open(sys.argv[2], "w") as f:
    json.dump([m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes, m.temp_size_in_bytes], f)
lowered.compile(compiler_options={"xla_dump_to": sys.argv[1]})
time.sleep(600)
"""


def test_buffer_assignment_gives_the_executables_memory_analysis(tmp_path):
    script, compiled = tmp_path / "child.py", tmp_path / "compiled.json"
    script.write_text(textwrap.dedent(_CHILD))
    dump = tmp_path / "dump"
    dump.mkdir()
    command = [sys.executable, str(script), str(dump), str(compiled)]
    assignment, _ = until_buffer_assignment(command, dump, "step", timeout_s=120)
    memory = MemoryAnalysis.of_buffer_assignment(assignment.read_text())
    assert memory == MemoryAnalysis(*json.loads(compiled.read_text()))
    assert memory.aliased > 0 and memory.temporaries > 0  # the parser saw every kind of allocation

    # what is live at the peak, by shape: every value's shape read
    live = peak_live_bytes(assignment, lambda dtype, dims: "parameter" if dims == (64, 128) else dtype)
    assert set(live) == {"parameter", "f32"}
    # the largest shapes at the peak: the activations (x @ w and what follows it), whole buffers of them
    largest = largest_at_peak(assignment, count=2)
    (shape, size), (_, second) = largest.items()
    assert shape == "f32[256,128]" and size % (256 * 128 * 4) == 0 and size >= second


def test_what_is_live_at_the_peak_includes_a_loops_carried_values(tmp_path):
    """A loop's carried values are one tuple's elements, each a buffer with its own shape (on TPU, most of
    the step's bytes): read by their index in the tuple's shape."""

    # A constant of this run's own: the persistent compile cache's key leaves out xla_dump_to, and an
    # executable read from the cache dumps nothing.
    decay = 1.0 + random.random() / 100

    def f(w, x):
        def body(carry, _):
            a, b = carry
            return (jnp.tanh(a @ b), b * decay), jnp.sum(a)

        (a, _), sums = jax.lax.scan(body, (x, w), None, length=3)
        return a.sum() + sums.sum()

    args = jax.ShapeDtypeStruct((64, 64), jnp.float32), jax.ShapeDtypeStruct((256, 64), jnp.float32)
    jax.jit(jax.grad(f)).lower(*args).compile(compiler_options={"xla_dump_to": str(tmp_path)})
    live = peak_live_bytes(buffer_assignment_dump(tmp_path, "f"), lambda dtype, dims: f"{dtype}{list(dims)}")
    assert live.get("unclassified", 0) <= 64  # a tuple's own table of pointers at most
    assert live["f32[3, 256, 64]"] >= 3 * 256 * 64 * 4  # the scan's stacked activations, kept for the backward


def test_a_compile_killed_for_memory_is_named_so(tmp_path):
    """The out-of-memory killer's SIGKILL, not a bare exit code: the plan turns it into advice."""
    command = [sys.executable, "-c", "import os, signal; print('compiling'); os.kill(os.getpid(), signal.SIGKILL)"]
    with pytest.raises(CompileKilled, match="out-of-memory killer"):
        until_buffer_assignment(command, tmp_path, "step", timeout_s=60)
