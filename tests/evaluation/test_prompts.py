"""Prompt sets in the benchmarks' own file formats, written by the tests."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bdpo_jax.errors import UserError
from configs.evaluate.common import prompt_set
from scorers_torch.evaluation.prompts import PromptSetError, load_prompt_set

CAPTIONS = ["a cat", "", "a dog", "a cat", None, "  a bird  "]


def test_pickapic_parquet_file_directory_and_save_to_disk(tmp_path):
    table = pa.table({"caption": CAPTIONS, "jpg_0": [b"x"] * 6})
    pq.write_table(table, tmp_path / "one.parquet")
    snapshot = tmp_path / "snapshot" / "data"
    snapshot.mkdir(parents=True)
    pq.write_table(table, snapshot / "validation_unique-00000-of-00001.parquet")
    pq.write_table(pa.table({"caption": ["other split"]}), snapshot / "train-00000-of-00001.parquet")
    saved = tmp_path / "saved" / "validation_unique"
    saved.mkdir(parents=True)
    with pa.ipc.new_stream(str(saved / "data-00000-of-00001.arrow"), table.schema) as writer:
        writer.write_table(table)
    for path in (tmp_path / "one.parquet", tmp_path / "snapshot", tmp_path / "saved"):
        prompts = load_prompt_set("pick", prompt_set("pickapic", path=str(path)))
        assert prompts.texts == ("a cat", "a dog", "a bird")
        assert prompts.indices == (0, 2, 5)  # positions in the source
        assert prompts.skipped == {"empty": 2, "duplicate": 1, "beyond_limit": 0}


def test_partiprompts_tsv(tmp_path):
    path = tmp_path / "PartiPrompts.tsv"
    path.write_text('Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\t\n"a ""quoted"" word"\tArts\tX\t\n')
    prompts = load_prompt_set("parti", prompt_set("partiprompts", path=str(path)))
    assert prompts.texts == ("bond", 'a "quoted" word')


def test_hpdv2_benchmark_folder(tmp_path):
    for k, style in enumerate(["anime", "concept-art", "paintings", "photo"]):
        (tmp_path / f"{style}.json").write_text(
            json.dumps([f"{style} {i}" for i in range(3)] + (["shared"] if k else []))
        )
    prompts = load_prompt_set("hpd", prompt_set("hpdv2", path=str(tmp_path)))
    assert len(prompts) == 13 and prompts.texts[:4] == ("anime 0", "anime 1", "anime 2", "concept-art 0")
    assert prompts.skipped["duplicate"] == 2
    (tmp_path / "photo.json").unlink()
    with pytest.raises(PromptSetError, match=r"lacks \['photo.json'\].*HPDv2"):
        load_prompt_set("hpd", prompt_set("hpdv2", path=str(tmp_path)))


def test_lines_inline_and_limit(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(f"prompt {i}" for i in range(20)) + "\n\nprompt 3\n")
    full = load_prompt_set("lines", prompt_set("lines", path=str(path)))
    assert len(full) == 20 and full.skipped == {"empty": 1, "duplicate": 1, "beyond_limit": 0}
    subset = load_prompt_set("lines", prompt_set("lines", path=str(path), limit=5))
    again = load_prompt_set("lines", prompt_set("lines", path=str(path), limit=5))
    other = load_prompt_set("lines", prompt_set("lines", path=str(path), limit=5, sample_seed=1))
    assert subset == again and subset.indices != other.indices
    assert list(subset.indices) == sorted(subset.indices) and set(subset.texts) <= set(full.texts)
    assert subset.skipped["beyond_limit"] == 15 and subset.describe()["sha256"] != full.describe()["sha256"]
    inline = load_prompt_set("mine", prompt_set("inline", prompts=("x", "y", "x")))
    assert inline.texts == ("x", "y") and inline.source == "inline"


def test_errors_name_the_file_and_the_fix(tmp_path):
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "p.parquet")
    with pytest.raises(PromptSetError, match=r"no column 'caption' \(it has \['text'\]\).*prompts.pick.column"):
        load_prompt_set("pick", prompt_set("pickapic", path=str(tmp_path / "p.parquet")))
    assert load_prompt_set("pick", prompt_set("pickapic", path=str(tmp_path / "p.parquet"), column="text")).texts == (
        "a",
    )
    (tmp_path / "parti.tsv").write_text("prompt\n a\n")
    with pytest.raises(PromptSetError, match=r"no column 'Prompt'.*prompts.parti.column"):
        load_prompt_set("parti", prompt_set("partiprompts", path=str(tmp_path / "parti.tsv")))
    with pytest.raises(PromptSetError, match=r"does not exist \(--config.prompts.x.path\)"):
        load_prompt_set("x", prompt_set("lines", path=str(tmp_path / "nope.txt")))
    (tmp_path / "dir").mkdir()
    pq.write_table(pa.table({"caption": ["a"]}), tmp_path / "dir" / "train-0.parquet")
    with pytest.raises(PromptSetError, match=r"no files of split 'validation_unique'.*prompts.pick.split"):
        load_prompt_set("pick", prompt_set("pickapic", path=str(tmp_path / "dir")))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(PromptSetError, match="no prompts left"):
        load_prompt_set("e", prompt_set("lines", path=str(tmp_path / "empty.txt")))


def test_unreadable_prompt_files_are_named(tmp_path):
    """A prompt file that is not UTF-8, a folder given as a file, a cut-short parquet file: one error naming it."""
    (tmp_path / "latin1.txt").write_bytes("une \xe9toile\n".encode("latin-1"))
    with pytest.raises(PromptSetError, match=r"latin1.txt is not UTF-8 text \(invalid continuation byte at byte 4\)"):
        load_prompt_set("fr", prompt_set("lines", path=str(tmp_path / "latin1.txt")))
    (tmp_path / "parti.tsv").write_bytes("Prompt\n\xe9\n".encode("latin-1"))
    with pytest.raises(PromptSetError, match=r"parti.tsv is not UTF-8 text"):
        load_prompt_set("parti", prompt_set("partiprompts", path=str(tmp_path / "parti.tsv")))
    with pytest.raises(PromptSetError, match=r"is a folder; give prompts.x.path a file"):
        load_prompt_set("x", prompt_set("lines", path=str(tmp_path)))
    pq.write_table(pa.table({"caption": [f"prompt {i}" for i in range(100)]}), tmp_path / "p.parquet")
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "p.parquet").read_bytes()[:300])
    with pytest.raises(UserError, match=r"cut.parquet cannot be read \(.*magic bytes.*\): .* fetch it again"):
        load_prompt_set("pick", prompt_set("pickapic", path=str(tmp_path / "cut.parquet")))
