"""Tests run on CPU with tiny models the tests build; nothing is downloaded."""

import http.server
import os
import tempfile
import uuid

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Four host devices, so that sharded code runs for real; one-device runs use a sub-mesh.
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
# Most of the suite's time is XLA compiling train steps for the CPU, much of it LLVM optimising the generated
# code; the tests' tiny programs run in milliseconds either way. Level 0 compiles the same programs without that
# (side by side, cold, on this 2-core machine: a test_step fixture's compiles 27% shorter). Processes that a
# launcher starts keep it (launch.common.cpu_environment keeps all but the device count).
os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
# And XLA's elemental emitter for the CPU's fused kernels instead of its MLIR fusion emitters, which set up an
# MLIR pipeline for each of a train step's many small fusions: the micro UNet's train step compiles in 11.5 CPU-s
# instead of 21.6 at level 0 (38.4 with XLA's defaults; python -m bench.cpu_compile, this 2-core machine,
# 2026-12-03); tests/train/test_step.py alone, cold: 271 CPU-s instead of 393.
os.environ["XLA_FLAGS"] += " --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Set as environment variables, so that the processes tests launch (train command lines, launchers,
# SLURM tasks) inherit them: parity is checked in full fp32 (no reduced-precision matmul passes), and
# the same train step, built many times, is compiled once (a compile takes minutes on a loaded 2-core CPU;
# in a two-process launch, process 1 compiles it anyway: tests/launch/test_local.py says why).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "bdpo-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import pytest

from launch.local import free_port

# The slowest files first, so that none of them starts last and runs alone: xdist hands each worker whole
# files (--dist loadfile) in collection order (--no-loadscope-reorder: its own order is by test count, which
# put the small world's file last). Seconds each on a 2-core machine, cold, the suite on both cores
# (2026-12-03): plan 281, step 261, world 234, slurm 122, local 120, checkpoint 94, the rest under 55; in
# this order (set when checkpoint took 230 s) the two workers' files took 728 s and 708 s.
SLOWEST_FIRST = (
    "tests/world/test_world.py",
    "tests/train/test_step.py",
    "tests/train/test_plan.py",
    "tests/train/test_checkpoint.py",
    "tests/launch/test_slurm.py",
    "tests/launch/test_local.py",
)


def pytest_collection_modifyitems(items):
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest as collected


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A small preprocessing cache (micro UNet, the three weight-free test scorers), for the train and launch tests."""
    from configs.preprocess import tiny as preprocess_tiny
    from scorers_torch import preprocess
    from scorers_torch.testing import make_preference_parquet
    from scorers_torch.tiny_models import make_tiny_pipeline

    root = tmp_path_factory.mktemp("train")
    pipeline = make_tiny_pipeline(root / "pipeline", "sd", unet_preset_name="micro-sd1")
    config = preprocess_tiny.get_config()
    config.source = str(make_preference_parquet(root / "pairs.parquet", 48, seed=1, size=64))
    config.base_model = str(pipeline)
    config.output_dir = str(root / "cache")
    config.shard_size = 16
    preprocess.run(config)
    return root / "cache"


@pytest.fixture(scope="session")
def reference_run(tiny_cache, tmp_path_factory):
    """(workdir, final state) of tests/run_fixtures.py's run, in this process on four devices."""
    from run_fixtures import run_config

    from bdpo_jax import train as train_module

    workdir = tmp_path_factory.mktemp("reference_run")
    return workdir, train_module.train(run_config(tiny_cache), workdir)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on localhost (object storage tests: tests/test_storage.py, train, evaluation)."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    pytest.importorskip("s3fs", reason="s3fs is not installed")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def gcs_server():
    """gcp-storage-emulator on localhost, in memory."""
    emulator = pytest.importorskip("gcp_storage_emulator.server", reason="gcp-storage-emulator is not installed")
    pytest.importorskip("gcsfs", reason="gcsfs is not installed")
    _send_generation_with_downloads()
    port = free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True)
    with pytest.MonkeyPatch.context() as patch:
        # It answers one request at a time on the standard library's HTTPServer, whose backlog is 5
        # connections: a ranged read's sixth concurrent request (gcsfs sends them at once, as to GCS) was
        # dropped and retried a second later. Queued instead; served in the same order.
        patch.setattr(http.server.HTTPServer, "request_queue_size", 128)
        server.start()  # listens before it returns
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _send_generation_with_downloads() -> None:
    """GCS answers a download with the object's generation (``x-goog-generation``); gcp-storage-emulator does
    not. tensorstore reads it: without it, orbax's checkpoint of more than a few arrays fails on re-reading its
    OCDBT manifest ("Malformed StorageGeneration"). Added to the stand-in's download handler, nothing else."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    original = objects.download
    if getattr(original, "sends_generation", False):
        return

    def download(request, response, storage, *args, **kwargs):
        original(request, response, storage, *args, **kwargs)
        try:
            found = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except NotFound:
            return
        response["x-goog-generation"] = found["generation"]

    download.sends_generation = True
    objects.download = download  # objects.get (alt=media) calls it by this name
    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is original:
                handlers[method] = download


@pytest.fixture
def gcs_bucket(gcs_server, monkeypatch):
    """A new bucket; gcsfs (STORAGE_EMULATOR_HOST) and tensorstore (TENSORSTORE_GCS_HTTP_URL) point at the emulator."""
    import fsspec
    import gcsfs

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", gcs_server)
    gcsfs.GCSFileSystem.clear_instance_cache()
    bucket = f"bdpo-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("gs").mkdir(bucket)
    yield bucket
    gcsfs.GCSFileSystem.clear_instance_cache()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A new bucket; s3fs reaches the server through fsspec's config, as a user sets an endpoint."""
    import fsspec
    import s3fs

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_server})
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"bdpo-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(bucket)
    yield bucket
    s3fs.S3FileSystem.clear_instance_cache()
