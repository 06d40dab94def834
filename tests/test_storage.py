"""bdpo_jax.storage on a local disk, fsspec's memory file system, S3 as served
by moto's server on localhost and GCS as served by gcp-storage-emulator (the
same s3fs and gcsfs code paths as the real stores). Orbax checkpoints in the
gs:// stand-in: tests/train/test_checkpoint.py, a train run in a gs:// workdir."""

import uuid

import numpy as np
import pytest

from bdpo_jax import storage


@pytest.fixture(params=["local", "memory", "s3", "gcs"])
def root(request, tmp_path, monkeypatch):
    if request.param == "local":
        yield str(tmp_path / "store")
        return
    if request.param == "memory":
        root = f"memory://{uuid.uuid4().hex}"
        yield root
        storage.remove(root)
        return
    if request.param == "gcs":
        yield f"gs://{request.getfixturevalue('gcs_bucket')}/cache"
        return
    yield f"s3://{request.getfixturevalue('s3_bucket')}/cache"


def shard_arrays(rows: int = 37) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "latents_0": rng.standard_normal((rows, 4, 4, 3)).astype(np.float16),
        "label": rng.integers(-1, 2, rows).astype(np.int8),
        "scores": rng.standard_normal((rows, 3, 2)).astype(np.float32),
    }


def test_files_and_listing(root):
    assert not storage.exists(storage.join(root, "job.json"))
    assert storage.list_names(root) == []
    storage.write_json(storage.join(root, "job.json"), {"num_shards": 2})
    storage.write_text(storage.join(root, "a", "notes.txt"), "hello")
    assert storage.read_json(storage.join(root, "job.json")) == {"num_shards": 2}
    assert storage.read_text(storage.join(root, "a", "notes.txt")) == "hello"
    assert storage.list_names(root) == ["a", "job.json"]
    storage.remove(storage.join(root, "a"))
    assert storage.list_names(root) == ["job.json"]
    assert storage.is_local(root) == (root.startswith("/"))


def test_directory_appears_whole(root):
    arrays = shard_arrays()
    shard = storage.join(root, "shards", "00000")
    with storage.atomic_directory(shard) as d:
        for name, array in arrays.items():
            d.save_array(name, array)
        d.write_json("stats.json", {"pairs": 37})
        assert not storage.is_complete(shard)  # not before the block ends
    assert storage.is_complete(shard)
    assert storage.complete_children(storage.join(root, "shards")) == ["00000"]
    assert storage.read_json(storage.join(shard, "stats.json")) == {"pairs": 37}
    for name, array in arrays.items():
        np.testing.assert_array_equal(storage.load_array(storage.join(shard, f"{name}.npy")), array)
        np.testing.assert_array_equal(np.asarray(storage.open_array(storage.join(shard, f"{name}.npy"))), array)
    with pytest.raises(FileExistsError), storage.atomic_directory(shard):
        pass
    with storage.atomic_directory(shard, overwrite=True) as d:
        d.save_array("label", np.zeros(3, np.int8))
    assert sorted(storage.list_names(shard)) == [storage.COMPLETE_MARKER, "label.npy"]


def test_a_killed_writer_leaves_nothing_complete(root):
    shards = storage.join(root, "shards")
    with pytest.raises(RuntimeError), storage.atomic_directory(storage.join(shards, "00001")) as d:
        d.save_array("label", np.ones(5, np.int8))
        raise RuntimeError("killed")
    assert storage.complete_children(shards) == []
    # A writer killed for good leaves objects without the marker; the next one replaces them.
    fs, path = storage.filesystem(storage.join(shards, "00002", "stale.npy"))
    fs.makedirs(storage.join(shards, "00002"), exist_ok=True)
    fs.pipe_file(path, b"half")
    assert not storage.is_complete(storage.join(shards, "00002"))
    assert storage.complete_children(shards) == []
    with storage.atomic_directory(storage.join(shards, "00002")) as d:
        d.save_array("label", np.ones(5, np.int8))
    assert storage.list_names(storage.join(shards, "00002")) == [storage.COMPLETE_MARKER, "label.npy"]
    assert storage.complete_children(shards) == ["00002"]


def test_create_exclusive_append_and_rename(root):
    """A run's lock, metrics and set-aside checkpoints: a name is created once; a file grows; a folder moves."""
    lock = storage.join(root, "run.lock")
    assert storage.create_exclusive(lock, b"first")
    assert not storage.create_exclusive(lock, b"second")
    assert storage.read_bytes(lock) == b"first"
    if root.startswith("s3://"):  # the precondition itself, which closes the race between check and create
        fs, path = storage.filesystem(lock)
        with pytest.raises(FileExistsError):
            fs.pipe_file(path, b"second", mode="create")
    metrics = storage.join(root, "metrics.jsonl")
    storage.append_text(metrics, "1\n")
    storage.append_text(metrics, "2\n")
    assert storage.read_text(metrics) == "1\n2\n"
    storage.write_text(storage.join(root, "4", "a.txt"), "a")
    storage.write_text(storage.join(root, "4", "sub", "b.txt"), "b")
    assert storage.split(storage.join(root, "4") + "/") == (root.rstrip("/"), "4")
    storage.rename(storage.join(root, "4"), storage.join(root, "damaged-4"))
    assert storage.list_names(root) == ["damaged-4", "metrics.jsonl", "run.lock"]
    assert storage.read_text(storage.join(root, "damaged-4", "sub", "b.txt")) == "b"
    checksums = storage.stored_checksums(storage.join(root, "damaged-4"))
    assert sorted(checksums) == ["a.txt", "sub/b.txt"]


def test_rows_as_numpy_reads_them(root):
    array = shard_arrays()["latents_0"]
    path = storage.join(root, "latents_0.npy")
    with storage.atomic_directory(root, overwrite=True) as d:
        d.save_array("latents_0", array)
    rows = storage.open_array(path)
    assert rows.shape == array.shape and rows.dtype == array.dtype and len(rows) == len(array)
    mask = np.arange(len(array)) % 5 == 0
    for key in (0, 5, -1, slice(3, 11), slice(None, None, 3), slice(30, 100), [9, 2, 2, 30], np.array([36, 0]), mask):
        np.testing.assert_array_equal(rows[key], array[key], err_msg=str(key))
    np.testing.assert_array_equal(rows[2:5, 1], array[2:5, 1])
    np.testing.assert_array_equal(rows[4, 1:3], array[4, 1:3])
    with pytest.raises(IndexError):
        rows[len(array)]


def test_remote_reads_fetch_only_the_rows_asked_for(root, monkeypatch):
    if storage.is_local(root):
        pytest.skip("local arrays are memory-mapped")
    array = np.arange(1000 * 256, dtype=np.float32).reshape(1000, 256)  # 1 KiB rows, 1000 KiB
    with storage.atomic_directory(root, overwrite=True) as d:
        d.save_array("x", array)
    rows = storage.RemoteArray(storage.join(root, "x.npy"))
    fs = rows._fs
    requested = []
    real_cat_ranges = fs.cat_ranges

    def counting(paths, starts, ends, **kwargs):
        requested.extend(e - s for s, e in zip(starts, ends, strict=True))
        return real_cat_ranges(paths, starts, ends, **kwargs)

    with monkeypatch.context() as patch:  # s3fs's sync cat_ranges is an instance attribute: restored, not deleted
        patch.setattr(fs, "cat_ranges", counting)
        np.testing.assert_array_equal(rows.take([700, 3, 4, 5, 999]), array[[700, 3, 4, 5, 999]])
    assert sorted(requested) == [1024, 1024, 3 * 1024]  # rows 3-5 in one range; nothing else
    # Contiguous rows: one request of block_size bytes serves the next rows from the read-ahead cache.
    rows = storage.RemoteArray(storage.join(root, "x.npy"), block_size=64 * 1024)
    for i in range(40):
        np.testing.assert_array_equal(rows[100 + i], array[100 + i])
    cache = getattr(rows._file, "cache", None)  # memory:// files are plain buffers, s3fs and gcsfs files cached
    assert (cache is not None) == root.startswith(("s3://", "gs://"))
    if cache is not None:
        assert cache.miss_count <= 2  # a buffered remote file (s3fs); memory:// files are plain buffers
        assert cache.total_requested_bytes < 2 * 64 * 1024 + 2048 < array.nbytes


def test_unreadable_arrays_are_named(root):
    path = storage.join(root, "f.npy")
    fs, p = storage.filesystem(path)
    if storage.is_local(root):
        fs.makedirs(root, exist_ok=True)
    with fs.open(p, "wb") as f:
        np.save(f, np.asfortranarray(np.ones((3, 4))))
    if storage.is_local(root):
        assert isinstance(storage.open_array(path), np.memmap)
    else:
        with pytest.raises(ValueError, match="Fortran"):
            storage.open_array(path)


def upload(local_dir, root):
    fs, path = storage.filesystem(root)
    fs.put(str(local_dir).rstrip("/") + "/", path, recursive=True)
    fs.invalidate_cache()


def epoch_of(cache):
    from bdpo_jax.data import CacheDataset, PairLoader

    loader = PairLoader(CacheDataset(cache), 8, seed=0)
    return [loader.batch(step) for step in range(loader.batches_per_epoch)]


@pytest.mark.parametrize("root", ["gcs"], indirect=True)
def test_the_trainer_reads_a_cache_in_object_storage(root, tiny_cache):
    """The same batches from a bucket as from the disk, through the checked reader;
    a damaged object is named there too. On the GCS stand-in; on S3's, the preprocessing
    test below reads its cache back through this reader."""
    from bdpo_jax.cache import CacheError
    from bdpo_jax.data import CacheDataset

    upload(tiny_cache, root)
    for got, want in zip(epoch_of(root), epoch_of(tiny_cache), strict=True):
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    latents = storage.join(root, "shards", "00001", "latents_0.npy")
    storage.write_bytes(latents, storage.read_bytes(latents)[:-10])
    with pytest.raises(CacheError, match=r"shards/00001/latents_0.npy is truncated"):
        CacheDataset(root)


@pytest.mark.parametrize("root", ["s3"], indirect=True)
def test_preprocessing_writes_a_cache_into_object_storage(root, tiny_cache):
    """The preprocessing job with a bucket as output_dir: the same cache as on disk, readable by the trainer.
    On the S3 stand-in; on GCS's, the calls it writes with run in the tests above."""
    from configs.preprocess import tiny as preprocess_tiny
    from scorers_torch import preprocess

    job = storage.read_json(storage.join(tiny_cache, "job.json"))
    config = preprocess_tiny.get_config()
    config.source, config.base_model = job["source"]["spec"], job["base_model"]["path"]
    config.shard_size, config.output_dir = job["shard_size"], root
    manifest = preprocess.run(config)
    assert manifest == storage.read_json(storage.join(tiny_cache, "manifest.json"))
    assert storage.is_complete(storage.join(root, "shards", "00000"))
    for got, want in zip(epoch_of(root), epoch_of(tiny_cache), strict=True):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
