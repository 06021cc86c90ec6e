"""Text encoders: MiniLM (real pretrained, offline) and T5 (tiny random model from a local directory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from opensora_mlops.config import ConfigError
from opensora_mlops.models.text_encoder import (
    MiniLMTextEncoder,
    T5TextEncoder,
    build_text_encoder,
)


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    return MiniLMTextEncoder(max_length=16)


def test_minilm_shapes_and_mask_counts_tokens(minilm: MiniLMTextEncoder) -> None:
    texts = ["a red ball", "a small blue square moves slowly to the left"]
    emb, mask = minilm.encode(texts)
    assert minilm.output_dim == 384 and minilm.model_max_length == 16
    assert emb.shape == (2, 16, 384) and emb.dtype == torch.float32
    assert mask.shape == (2, 16) and mask.dtype == torch.long
    for text, row in zip(texts, mask, strict=True):
        n_tokens = len(minilm.tokenizer(text)["input_ids"])  # with [CLS] and [SEP]
        assert row.sum().item() == n_tokens
        assert row[:n_tokens].eq(1).all() and row[n_tokens:].eq(0).all()
    # padded positions carry no signal; real ones do
    assert emb[mask == 0].abs().max().item() == 0.0
    assert emb[mask == 1].abs().amax(dim=-1).gt(0).all()


def test_minilm_truncates_to_max_length(minilm: MiniLMTextEncoder) -> None:
    long_text = " ".join(["circle"] * 50)
    emb, mask = minilm.encode([long_text])
    assert emb.shape == (1, 16, 384)
    assert mask.sum().item() == 16


def test_minilm_deterministic_and_independent_of_batch(minilm: MiniLMTextEncoder) -> None:
    a1, m1 = minilm.encode(["a green triangle"])
    batch, mbatch = minilm.encode(["something much longer than the other caption here", "a green triangle"])
    torch.testing.assert_close(a1[0], batch[1], atol=1e-5, rtol=1e-5)
    assert torch.equal(m1[0], mbatch[1])
    other, _ = minilm.encode(["a purple hexagon"])
    assert (a1 - other).abs().max().item() > 1e-2


def test_minilm_semantic_sanity(minilm: MiniLMTextEncoder) -> None:
    texts = ["a dog runs across the park", "a puppy is running through the park",
             "stock prices fell sharply on monday"]
    emb, mask = minilm.encode(texts)
    pooled = (emb * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    para = F.cosine_similarity(pooled[0], pooled[1], dim=0).item()
    unrelated = F.cosine_similarity(pooled[0], pooled[2], dim=0).item()
    assert para > unrelated + 0.2, (para, unrelated)


def test_minilm_null_is_padded_empty_caption(minilm: MiniLMTextEncoder) -> None:
    emb, mask = minilm.null(3)
    assert emb.shape == (3, 16, 384) and mask.shape == (3, 16)
    assert mask.sum(1).tolist() == [2, 2, 2]  # [CLS] [SEP]
    empty, _ = minilm.encode([""])
    torch.testing.assert_close(emb[2], empty[0])


def test_minilm_batches_internally() -> None:
    small = MiniLMTextEncoder(max_length=8, batch_size=2)
    texts = ["one", "two", "three", "four", "five"]
    emb, mask = small.encode(texts)
    assert emb.shape == (5, 8, 384)
    single, _ = small.encode(["five"])
    torch.testing.assert_close(single[0], emb[4], atol=1e-5, rtol=1e-5)


def test_minilm_rejects_bad_arguments(minilm: MiniLMTextEncoder) -> None:
    with pytest.raises(ValueError, match="max_length"):
        MiniLMTextEncoder(max_length=1000)
    with pytest.raises(TypeError, match="caption 1"):
        minilm.encode(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one"):
        minilm.encode([])


# ---- T5 -------------------------------------------------------------------------------------------

WORDS = ["a", "red", "blue", "green", "ball", "square", "moves", "left", "right", "slowly", "the"]


def _save_tiny_t5(directory: Path) -> Path:
    """A randomly initialised 2-layer T5 encoder and an offline WordLevel tokenizer, like a real one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # T5 appends </s> to every sequence
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.save_pretrained(directory)
    config = T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    T5EncoderModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny_t5(tmp_path_factory.mktemp("tiny_t5"))


def test_t5_round_trip_shapes_and_mask(t5_dir: Path) -> None:
    enc = T5TextEncoder(t5_dir, max_length=6)
    assert enc.output_dim == 32 and enc.model_max_length == 6
    emb, mask = enc.encode(["a red ball", "the blue square moves slowly left right"])
    assert emb.shape == (2, 6, 32) and emb.dtype == torch.float32
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0]  # 3 words + </s>
    assert mask[1].tolist() == [1] * 6  # truncated
    assert emb[0, 4:].abs().max().item() == 0.0
    # same text, same embedding, regardless of the batch it came in
    alone, _ = enc.encode("a red ball")
    torch.testing.assert_close(alone[0], emb[0], atol=1e-5, rtol=1e-5)
    different, _ = enc.encode("a green square")
    assert (different[0, :3] - emb[0, :3]).abs().max().item() > 1e-3
    # the loaded weights are the saved ones: compare with a direct transformers forward
    from transformers import T5EncoderModel

    reference = T5EncoderModel.from_pretrained(t5_dir, local_files_only=True).eval()
    ids = enc.tokenizer(["a red ball"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = reference(input_ids=ids).last_hidden_state[0]
    torch.testing.assert_close(emb[0, :4], expected, atol=1e-5, rtol=1e-5)


def test_t5_bfloat16_weights_give_float32_outputs(t5_dir: Path) -> None:
    full = T5TextEncoder(t5_dir, max_length=6)
    half = build_text_encoder({"type": "t5", "from_pretrained": str(t5_dir), "max_length": 6, "dtype": "bf16"})
    assert next(half.model.parameters()).dtype == torch.bfloat16
    emb, mask = half.encode(["a red ball"])
    reference, _ = full.encode(["a red ball"])
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb, reference, atol=0.1, rtol=0.05)


def test_t5_null_and_builder(t5_dir: Path) -> None:
    enc = build_text_encoder({"type": "t5", "from_pretrained": str(t5_dir), "max_length": 5})
    assert isinstance(enc, T5TextEncoder) and enc.model_max_length == 5
    emb, mask = enc.null(2)
    assert emb.shape == (2, 5, 32)
    assert mask.tolist() == [[1, 0, 0, 0, 0]] * 2  # only </s>


def test_t5_missing_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_t5"
    with pytest.raises(FileNotFoundError, match="no_such_t5"):
        T5TextEncoder(missing)
    with pytest.raises(FileNotFoundError, match="no_such_t5"):
        build_text_encoder({"type": "t5", "from_pretrained": str(missing)})


def test_builder_is_strict() -> None:
    with pytest.raises(ConfigError, match="max_lenght"):
        build_text_encoder({"type": "minilm", "max_lenght": 32})
    with pytest.raises(ConfigError, match="type"):
        build_text_encoder({"type": "clip"})
    with pytest.raises(ConfigError, match="from_pretrained"):
        build_text_encoder({"type": "t5"})
    with pytest.raises(ConfigError, match="from_pretrained"):
        build_text_encoder({"type": "minilm", "from_pretrained": "/x"})
    with pytest.raises(ConfigError, match="dtype"):
        build_text_encoder({"type": "minilm", "dtype": "float8"})


def test_builder_minilm() -> None:
    enc = build_text_encoder({"type": "minilm", "max_length": 12})
    assert isinstance(enc, MiniLMTextEncoder)
    emb, mask = enc.encode(["a ball"])
    assert emb.shape == (1, 12, 384) and mask.sum().item() == 4
