"""XLA's memory analysis of a compiled step, and the same figures read from the
buffer assignment that XLA dumps before it generates code.

XLA sizes every buffer (arguments, outputs, donated aliases, temporaries) in
buffer assignment, after its HLO passes and before code generation; the
compiled executable's ``memory_analysis()`` only sums that assignment. On
XLA:CPU, and in the TPU and GPU compilers that ``bdpo_jax.plan`` runs here,
code generation of a large step (thousands of kernels) takes far longer than
everything before it, so the figures of a large model are read from the dump
of the assignment and the compile is stopped there (``until_buffer_assignment``).
Both ways give the same bytes (``tests/test_xla_memory.py``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

_ALLOCATION = re.compile(r"allocation \d+: size (\d+), (.*)")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+\[[\d,]*\])", re.M)  # name, dtype[dims]
_LIVE_AT_PEAK = re.compile(r"^\s+([\w.\-]+)\{([\d,]*)\}: (\d+) bytes", re.M)  # name, tuple index, size
_TUPLE_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\(.*?\)) [\w\-]+\(", re.M)  # name, (shapes)
_SHAPE_TOKEN = re.compile(r"[()]|\w+\[[\d,]*\]")


def _tuple_shape(text: str) -> list:
    """``(s32[], (f32[2]{0}, bf16[4,8]{1,0:T(8,128)}))`` as nested lists of ``dtype[dims]``."""
    stack: list[list] = [[]]
    for token in _SHAPE_TOKEN.findall(re.sub(r"/\*.*?\*/|\{[^{}]*\}", "", text)):  # no comments, no layouts
        if token == "(":
            stack.append([])
        elif token == ")":
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(token)
    return stack[0][0]


def _element(shape: list | str | None, index: str) -> str | None:
    """The array shape at a tuple index such as ``1,0``."""
    for i in (int(i) for i in index.split(",")):
        if not isinstance(shape, list) or i >= len(shape):
            return None
        shape = shape[i]
    return shape if isinstance(shape, str) else None


@dataclasses.dataclass(frozen=True)
class MemoryAnalysis:
    """Bytes of one compiled computation, as XLA's ``CompiledMemoryStats`` counts them."""

    arguments: int
    outputs: int
    aliased: int  # outputs written into donated arguments
    temporaries: int

    @property
    def peak(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self) | {"peak": self.peak}

    @classmethod
    def of_compiled(cls, compiled) -> MemoryAnalysis:
        m = compiled.memory_analysis()
        return cls(m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes, m.temp_size_in_bytes)

    @classmethod
    def of_buffer_assignment(cls, text: str) -> MemoryAnalysis:
        """Sums the allocations of XLA's ``*-buffer-assignment.txt`` dump the way
        ``CompiledMemoryStats`` does: entry parameters are arguments, maybe-live-out
        allocations outputs (aliased when also a parameter), the preallocated temp
        buffer the temporaries (thread-local and constant allocations are neither)."""
        sizes = dict.fromkeys(("arguments", "outputs", "aliased", "temporaries"), 0)
        found = False
        for line in text.splitlines():
            match = _ALLOCATION.match(line)
            if not match:
                continue
            found = True
            size, kinds = int(match[1]), match[2]
            parameter, live_out = kinds.startswith("parameter "), "maybe-live-out" in kinds
            sizes["arguments"] += size * parameter
            sizes["outputs"] += size * live_out
            sizes["aliased"] += size * (parameter and live_out)
            sizes["temporaries"] += size * ("preallocated-temp" in kinds)
        if not found:
            raise ValueError("no 'allocation N: size S, ...' line: not an XLA buffer assignment dump")
        return cls(**sizes)


def buffer_assignment_dump(dump_dir: Path, module: str) -> Path | None:
    """The finished buffer assignment of the jitted function ``module`` in
    ``dump_dir``; None until XLA has written the memory usage report it writes next."""
    name = f"jit_{module}.*after_optimizations"
    reports = sorted(dump_dir.glob(f"module_*.{name}-memory-usage-report.txt"))
    if not reports:
        return None
    return reports[-1].with_name(reports[-1].name.replace("-memory-usage-report", "-buffer-assignment"))


class CompileKilled(RuntimeError):
    """The compiling process was killed (SIGKILL), most often for want of this machine's memory."""


def until_buffer_assignment(
    command: list[str], dump_dir: Path, module: str, timeout_s: float, env: dict[str, str] | None = None
) -> tuple[Path, float]:
    """Runs ``command`` (a process that compiles ``module`` with ``xla_dump_to=dump_dir``)
    until XLA has assigned its buffers, then stops it; the assignment's dump and the seconds it took.
    The persistent compilation cache is off in it: an executable loaded from there dumps nothing.
    ``env``: variables set for the process on top of this one's."""
    log = dump_dir / "compile.log"
    env = os.environ | (env or {}) | {"JAX_ENABLE_COMPILATION_CACHE": "false"}
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        while (dump := buffer_assignment_dump(dump_dir, module)) is None:
            if process.poll() is not None:
                if process.returncode == -signal.SIGKILL:
                    raise CompileKilled(
                        "the compile was killed (SIGKILL) before buffer assignment, most often by the out-of-memory "
                        f"killer: it needed more memory than this machine had free. {tail(log, 500)}"
                    )
                raise RuntimeError(f"the compile exited ({process.returncode}) before buffer assignment: {tail(log)}")
            if time.perf_counter() - start > timeout_s:
                raise TimeoutError(f"no buffer assignment of {module} after {timeout_s:.0f} s: {tail(log)}")
            time.sleep(1.0)
        seconds = time.perf_counter() - start
    finally:
        process.kill()
        process.wait()
    return dump, seconds


def tail(log: Path, chars: int = 3000) -> str:
    return "its log ends:\n" + log.read_text()[-chars:]


def peak_live_bytes(buffer_assignment: Path, kind: Callable[[str, tuple[int, ...]], str]) -> dict[str, int]:
    """The buffers live at the peak of XLA's heap simulation (its ``-live-range.txt``
    dump), summed by ``kind(dtype, dims)`` of each buffer's shape (read from the
    optimized HLO dumped beside it), a tuple's element by its index (a loop's carried values, most of a
    TPU program's bytes); a buffer whose shape is not found counts as "unclassified"."""
    stem = buffer_assignment.name.removesuffix("-buffer-assignment.txt")
    hlo = buffer_assignment.with_name(f"{stem}.txt").read_text()
    shapes = dict(_INSTRUCTION.findall(hlo))
    tuples = dict(_TUPLE_INSTRUCTION.findall(hlo))
    live = buffer_assignment.with_name(f"{stem}-live-range.txt").read_text()
    by_kind: dict[str, int] = {}
    parsed: dict[str, list] = {}
    for name, index, size in _LIVE_AT_PEAK.findall(live[live.index("(peak):") :]):
        if index:
            if name in tuples and name not in parsed:
                parsed[name] = _tuple_shape(tuples[name])
            shape = _element(parsed.get(name), index)
        else:
            shape = shapes.get(name)
        dtype, dims = shape.split("[", 1) if shape else ("", "")
        key = kind(dtype, tuple(int(d) for d in dims.split("]")[0].split(",") if d)) if dtype else "unclassified"
        by_kind[key] = by_kind.get(key, 0) + int(size)
    return by_kind


def largest_at_peak(buffer_assignment: Path, count: int = 6) -> dict[str, int]:
    """The ``count`` shapes (``dtype[dims]``) that hold the most bytes at the peak of XLA's heap
    simulation, largest first: what fills a chip."""
    by_shape = peak_live_bytes(buffer_assignment, lambda dtype, dims: f"{dtype}[{','.join(map(str, dims))}]")
    return dict(sorted(by_shape.items(), key=lambda item: -item[1])[:count])
