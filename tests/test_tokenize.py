"""Tokenisation in pieces: the stream equals whole-text tokenisation; the token file layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.corpora import m2d2
from analysis.errors import CorpusError, PipelineError
from analysis.lm import data
from analysis.lm.tokenize import PieceEncoder, cut_rule
from analysis.lm.tokens import TokenStreams, TokenWriter, token_dtype
from tests.builders import (
    awkward_lines,
    gpt2_style_tokenizer,
    llama_style_tokenizer,
    olmo_style_tokenizer,
    write_domain_dir,
)

FAMILIES = {
    "gpt2": (gpt2_style_tokenizer, {}, "byte-level"),
    "olmo": (olmo_style_tokenizer, {}, "byte-level"),
    "llama": (llama_style_tokenizer, {}, "newline-barrier"),
    "llama-metaspace": (llama_style_tokenizer, {"metaspace": True}, "newline-barrier"),
    # Merges across newlines: no cut is provably safe, so texts are tokenised whole.
    "llama-newline-merges": (llama_style_tokenizer, {"newline_merges": True}, None),
}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Each family's tokenizer saved and loaded again like a hub model (load_tokenizer)."""
    from analysis.lm.models import load_tokenizer

    texts = ["\n".join(awkward_lines(300, seed)) for seed in range(4)]
    loaded = {}
    for name, (build, options, _) in FAMILIES.items():
        directory = tmp_path_factory.mktemp(name)
        build(texts, **options).save_pretrained(directory)
        loaded[name] = (directory, load_tokenizer(str(directory)))
    return loaded


def whole_text_stream(tokenizer, lines, policy):
    """The stream of the pre-streaming implementation: each policy text tokenised whole."""
    stream, starts = data.tokenize_documents(tokenizer, m2d2.lm_texts(lines, policy), eos=m2d2.ends_with_eos(policy))
    return stream, starts


@pytest.mark.parametrize("family", FAMILIES)
def test_the_cut_rule_recognises_each_family(tokenizers, family):
    assert cut_rule(tokenizers[family][1]).family == FAMILIES[family][2]


def test_an_unknown_tokenizer_is_never_cut():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    encoder = PieceEncoder(PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="[UNK]"))
    assert encoder.rule.family is None and "WordLevel" in encoder.rule.reason
    assert not encoder.can_cut("a.", "a")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("policy", m2d2.JOIN_POLICIES)
@pytest.mark.parametrize("piece_chars", [1, 50, 1 << 20])
def test_streamed_tokens_equal_whole_text_tokenisation(tokenizers, tmp_path, family, policy, piece_chars):
    directory, tokenizer = tokenizers[family]
    splits = {split: awkward_lines(120, seed) for seed, split in enumerate(m2d2.SPLITS, start=10)}
    splits["test"][-1] += "no final newline"
    write_domain_dir(tmp_path, "math.AG", {s: "\n".join(lines) + ("" if s == "test" else "\n")
                                           for s, lines in splits.items()})
    record = data.tokenize_domain(model_name=str(directory), m2d2_root=str(tmp_path), domain="math.AG",
                                  policy=policy, output=tmp_path / "tok" / "math.AG.bin",
                                  metadata=tmp_path / "tok" / "math.AG.json", piece_chars=piece_chars,
                                  batch_chars=3 * piece_chars)
    files = TokenStreams(tmp_path / "tok" / "math.AG.bin")
    for split in m2d2.SPLITS:
        lines = m2d2.read_split(tmp_path, "math.AG", split).lines
        stream, starts = whole_text_stream(tokenizer, lines, policy)
        assert np.array_equal(files.split(split), stream), (family, policy, split)
        assert np.array_equal(files.starts(split), starts)
        texts = m2d2.lm_texts(lines, policy)
        counts = record["splits"][split]
        assert counts["documents"] == len(texts) and counts["tokens"] == len(stream)
        assert counts["characters"] == sum(len(t) for t in texts)
        assert counts["words"] == sum(len(t.split()) for t in texts)
        assert counts["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
    cuts = record["tokenization"]["cuts"]
    if piece_chars == 1 and policy in ("keep", "paragraph") and FAMILIES[family][2] is not None:
        assert cuts > 20  # the rule really cut: the equality above is not the trivial one
    if FAMILIES[family][2] is None:
        assert cuts == 0


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "olmo", "llama", "llama-metaspace"])
def test_cuts_are_safe_on_many_random_texts(tokenizers, family):
    """The property behind the rule, on many more texts than the file test: any cut the rule allows
    splits the tokens of the text exactly."""
    encoder = PieceEncoder(tokenizers[family][1])
    checked = 0
    for seed in range(100, 200):
        lines = awkward_lines(40, seed)
        text = "\n".join(lines)
        for i in range(1, len(lines)):
            if encoder.rule_allows(lines[i - 1], lines[i]):
                left, right = "\n".join(lines[:i]), "\n".join(lines[i:])
                got = sum(encoder.encode_pieces([left, right], [False, True]), [])
                assert got == encoder.encode([text])[0], (seed, i)
                checked += 1
    assert checked > 500


def test_token_ids_are_uint16_when_they_fit_and_uint32_otherwise(tmp_path):
    assert token_dtype(50257) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(128256) == np.uint32
    with TokenWriter(tmp_path / "d.AG", token_dtype(128256)) as writer:
        writer.begin_split("train")
        writer.append([0, 70000, 128255], [0])
        writer.commit({})
    files = TokenStreams(tmp_path / "d.AG.json")
    assert files.split("train").dtype == np.uint32 and list(files.split("train")) == [0, 70000, 128255]
    assert isinstance(files.split("train"), np.memmap)
    with TokenWriter(tmp_path / "e", np.uint16) as writer:
        writer.begin_split("train")
        with pytest.raises(PipelineError, match="does not fit the token file's uint16"):
            writer.append([70000])


def test_old_npz_token_files_are_refused_with_the_rerun_command(tmp_path):
    np.savez(tmp_path / "dom.npz", train=np.arange(5))
    (tmp_path / "dom.json").write_text(json.dumps({"splits": {}}))
    for path in (tmp_path / "dom.npz", tmp_path / "dom.json"):
        with pytest.raises(PipelineError, match="rerun tokenize_domain"):
            data.load_split(path, "train")


def test_a_truncated_token_file_is_refused(tmp_path):
    with TokenWriter(tmp_path / "dom", np.uint16) as writer:
        writer.begin_split("train")
        writer.append(np.arange(100), [0, 50])
        writer.commit({})
    with open(tmp_path / "dom.bin", "r+b") as handle:
        handle.truncate(150)
    with pytest.raises(PipelineError, match=r"dom\.bin: 150 bytes .* missing or truncated"):
        TokenStreams(tmp_path / "dom.bin")


def test_a_failed_split_leaves_no_output_and_no_temporary_file(tokenizers, tmp_path):
    directory, _ = tokenizers["gpt2"]
    good = "".join(f"line {i}.\n" for i in range(50))
    write_domain_dir(tmp_path / "m2d2", "hep-ex", {"train": good, "valid": good, "test": b"\xff\xfe\n\x80\n"})
    out = tmp_path / "tok"
    with pytest.raises(CorpusError, match=r"hep-ex/test\.txt: not UTF-8 text"):
        data.tokenize_domain(model_name=str(directory), m2d2_root=str(tmp_path / "m2d2"), domain="hep-ex",
                             policy="keep", output=out / "hep-ex.bin", metadata=out / "hep-ex.json")
    assert list(out.iterdir()) == []


def test_a_new_writer_removes_its_own_stale_temporary_files_only(tmp_path):
    stale = tmp_path / ".q-bio.bin.k1ll3d.tmp"
    other = tmp_path / ".q-bio.BM.bin.wr1t1n.tmp"  # another domain's job, running now
    stale.write_bytes(b"x")
    other.write_bytes(b"y")
    with TokenWriter(tmp_path / "q-bio", np.uint16) as writer:
        writer.begin_split("train")
        writer.append([1, 2], [0])
        writer.commit({})
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".q-bio.BM.bin.wr1t1n.tmp", "q-bio.bin", "q-bio.idx",
                                                          "q-bio.json"]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_tokenizer_file_alone_encodes_as_transformers_does(tokenizers, family):
    """tokenize_domain reads tokenizer.json without transformers where transformers would use the
    file as it stands: the same ids, EOS, BOS and vocabulary size."""
    from analysis.lm.models import FileTokenizer, load_encoding_tokenizer

    directory, reference = tokenizers[family]
    light = load_encoding_tokenizer(str(directory))
    assert isinstance(light, FileTokenizer)
    assert (light.eos_token_id, light.bos_token_id, len(light)) == \
        (reference.eos_token_id, reference.bos_token_id, len(reference))
    texts = ["\n".join(awkward_lines(60, seed)) for seed in range(20, 30)] + ["</s>\n<|endoftext|> x"]
    assert PieceEncoder(light).encode(texts) == reference(texts, add_special_tokens=False)["input_ids"]


def test_a_class_specific_tokenizer_or_setting_loads_through_transformers(tokenizers, tmp_path):
    import shutil

    from analysis.lm.models import FileTokenizer, load_encoding_tokenizer

    source, _ = tokenizers["gpt2"]
    for change in ({"tokenizer_class": "GPT2Tokenizer"}, {"add_prefix_space": True}):
        directory = tmp_path / next(iter(change))
        shutil.copytree(source, directory)
        config = json.loads((directory / "tokenizer_config.json").read_text())
        (directory / "tokenizer_config.json").write_text(json.dumps({**config, **change}))
        assert not isinstance(load_encoding_tokenizer(str(directory)), FileTokenizer), change


@pytest.mark.parametrize("loader", ["load_encoding_tokenizer", "load_tokenizer"])
def test_no_encoder_path_applies_the_files_truncation_or_padding(tokenizers, tmp_path, loader):
    """A tokenizer.json may truncate and pad; transformers applies those only when a call asks, and
    the piece encoder calls the backend itself, on either loading path (tokenizers alone, or
    transformers: there the backend keeps the file's settings)."""
    import shutil

    from analysis.lm import models

    directory = tmp_path / "truncating"
    shutil.copytree(tokenizers["gpt2"][0], directory)
    spec = json.loads((directory / "tokenizer.json").read_text())
    spec["truncation"] = {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}
    spec["padding"] = {"strategy": {"Fixed": 4096}, "direction": "Right", "pad_to_multiple_of": None,
                       "pad_id": 0, "pad_type_id": 0, "pad_token": "<|endoftext|>"}
    (directory / "tokenizer.json").write_text(json.dumps(spec))
    tokenizer = getattr(models, loader)(str(directory))
    assert tokenizer.backend_tokenizer.truncation is not None  # the file's settings reached the backend
    text = "\n".join(awkward_lines(30, 3))
    reference = models.load_tokenizer(str(directory))(text, add_special_tokens=False)["input_ids"]
    ids = PieceEncoder(tokenizer).encode([text])[0]
    assert len(ids) > 8 and ids == reference
    assert tokenizer.backend_tokenizer.truncation is not None  # the caller's tokenizer is left as it was


def test_windows_line_ends_and_trailing_spaces_are_cut_like_any_other(tokenizers, tmp_path):
    """Lines ending in "\\r" or spaces were never cut, so a whole split with Windows line ends was
    tokenised as one piece (a 32 MB domain passed 4 GB of memory)."""
    lines = [line.rstrip() for line in awkward_lines(200, 7) if line.strip()]
    for ending, name in (("\r", "crlf"), (" ", "trailing")):
        text = "".join(f"{line}{ending}\n" for line in lines)
        write_domain_dir(tmp_path / name, "hep-ex", {s: text for s in m2d2.SPLITS})
        for family in ("gpt2", "llama"):
            directory, tokenizer = tokenizers[family]
            out = tmp_path / "tok" / name / family
            record = data.tokenize_domain(model_name=str(directory), m2d2_root=str(tmp_path / name), domain="hep-ex",
                                          policy="keep", output=out / "hep-ex.bin", metadata=out / "hep-ex.json",
                                          piece_chars=200, batch_chars=1000, max_piece_chars=5000)
            stream, _ = whole_text_stream(tokenizer, m2d2.read_split(tmp_path / name, "hep-ex", "train").lines, "keep")
            assert np.array_equal(TokenStreams(out / "hep-ex.bin").split("train"), stream), (name, family)
            assert record["tokenization"]["cuts"] > 3 * 20, (name, family)  # about one per 200 characters


def test_a_text_that_cannot_be_cut_stops_the_job_before_it_is_tokenised(tokenizers, tmp_path):
    """Where no cut is safe (a tokenizer that is never cut, or one very long line), a stretch longer
    than max_piece_chars stops the job naming the file, instead of tokenising it whole."""
    from analysis.lm.tokenize import PieceTooLong

    text = "".join(f"line {i} of a long document.\n" for i in range(400))
    cases = {"llama-newline-merges": (text, "never cut"), "gpt2": (text.replace("\n", " ") + "\n", "one line")}
    for family, (content, why) in cases.items():
        root = tmp_path / family
        write_domain_dir(root, "hep-ex", {"train": "short.\n", "valid": "short.\n", "test": content})
        out = tmp_path / "tok" / family
        with pytest.raises(PieceTooLong, match=rf"hep-ex/test\.txt: a stretch of [\d,]+ characters .*{why}"):
            data.tokenize_domain(model_name=str(tokenizers[family][0]), m2d2_root=str(root), domain="hep-ex",
                                 policy="keep", output=out / "hep-ex.bin", metadata=out / "hep-ex.json",
                                 piece_chars=100, max_piece_chars=5000)
        assert list(out.iterdir()) == []
    # Under the same limit the cut tokenizer goes through the many-line text.
    record = data.tokenize_domain(model_name=str(tokenizers["gpt2"][0]), m2d2_root=str(tmp_path / "llama-newline-merges"),
                                  domain="hep-ex", policy="keep", output=tmp_path / "ok" / "hep-ex.bin",
                                  metadata=tmp_path / "ok" / "hep-ex.json", piece_chars=100, max_piece_chars=5000)
    assert record["tokenization"]["cuts"] > 50


def test_tokenize_domain_does_not_import_transformers(tokenizers, tmp_path):
    """Importing transformers (and torch) was most of a small tokenize_domain job."""
    import subprocess
    import sys

    directory, _ = tokenizers["llama"]
    write_domain_dir(tmp_path, "hep-ex", {s: "One line.\n\nTwo.\n" for s in m2d2.SPLITS})
    code = (
        "import sys; from analysis.lm.data import tokenize_domain\n"
        f"r = tokenize_domain(model_name={str(directory)!r}, m2d2_root={str(tmp_path)!r}, domain='hep-ex', "
        f"policy='keep', output={str(tmp_path / 'hep-ex.bin')!r}, metadata={str(tmp_path / 'hep-ex.json')!r})\n"
        "print(r['tokenization']['loaded_with'], sorted(m for m in ('transformers', 'torch') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[-2] == "tokenizers []"
