"""bdpo_jax.records: the comparison behind the workdir's config check, preprocessing's
job.json check and the evaluation folder's manifest check (each tested end to end
beside its command)."""

from bdpo_jax.records import ABSENT, changes, describe, flatten


def test_changes_are_listed_by_dotted_key_down_to_the_first_non_mappings():
    saved = {"source": {"files": {"a.parquet": "1:x"}, "rows": 8}, "scorers": [{"name": "clip"}], "shard": (1, 2)}
    new = {"source": {"files": {"a.parquet": "1:y"}, "rows": 8}, "scorers": [{"name": "hps"}], "shard": [1, 2]}
    found = changes(saved, new)
    assert found == {"source.files.a.parquet": ("1:x", "1:y"), "scorers": ([{"name": "clip"}], [{"name": "hps"}])}
    assert describe(found).startswith("scorers: [{'name': 'clip'}] -> [{'name': 'hps'}]; source.files")


def test_a_missing_key_reads_as_none_unless_absence_counts():
    saved, new = {"a": 1, "c": None}, {"a": 1, "b": None}
    assert changes(saved, new) == {}  # a setting added (or dropped) unset is no change
    assert changes(saved, new, absent=ABSENT) == {"b": (ABSENT, None), "c": (None, ABSENT)}
    assert changes({"lora": {"alpha": None}}, {}) == {"lora": ({"alpha": None}, None)}  # a whole section is not unset
    assert changes({"a": 1}, {"a": 1, "b": 2}, saved_keys_only=True) == {}


def test_flatten_gives_leaves_by_dotted_key():
    assert flatten({"train": {"steps": 5, "beta": 1.0}, "mesh": {}, "log_every": 2}) == {
        "train.steps": 5,
        "train.beta": 1.0,
        "log_every": 2,
    }
