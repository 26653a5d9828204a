from __future__ import annotations

import io

import numpy as np
import pytest
import sentencepiece as spm

from vlaflow.models.presets import EMBEDDED_VOCAB_SIZE, preset
from vlaflow.tokenizers import (
    EmbeddedTokenizer,
    PaliGemmaTokenizer,
    discretize_state,
    load_tokenizer,
    model_prompt,
)
from vlaflow.tokenizers.prompts import clean_prompt, pi05_prompt_text, prompt_token_ids, tokenize_prompt


@pytest.fixture(scope="module")
def paligemma_like(tmp_path_factory) -> PaliGemmaTokenizer:
    """A small SentencePiece model with PaliGemma's special ids and its 1024 <loc> pieces."""
    corpus = ["pick up the red cup and put it in the bin", "Task: open the drawer, State: 12 128 255;"] * 40
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buf,
        vocab_size=1100,
        model_type="bpe",
        user_defined_symbols=[f"<loc{i:04d}>" for i in range(1024)] + ["\n"],
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        hard_vocab_limit=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return PaliGemmaTokenizer(path)


def test_embedded_round_trip_and_loc_tokens():
    tok = EmbeddedTokenizer()
    text = "Bounding boxes: <loc0405><loc0011><loc0911><loc0197> closet\nSubtask: move to closet — ok"
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.loc_id(405) in ids and tok.loc_id(197) in ids
    assert tok.decode(ids) == text
    assert max(ids) < tok.vocab_size
    assert not set(ids) & set(tok.reserved_range)
    with pytest.raises(ValueError, match=r"\[0, 1023\]"):
        tok.loc_id(1024)


def test_embedded_vocab_matches_the_tiny_presets():
    assert EmbeddedTokenizer().vocab_size == EMBEDDED_VOCAB_SIZE


def test_paligemma_tokenizer_from_a_local_file(paligemma_like):
    tok = paligemma_like
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
    ids = tok.encode("pick<loc0005>", add_bos=True)
    assert ids[0] == 2 and tok.loc_id(5) in ids
    assert tok.decode(ids) == "pick<loc0005>"
    assert load_tokenizer(tok.spec()).encode("the cup") == tok.encode("the cup")


def test_paligemma_tokenizer_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        PaliGemmaTokenizer(tmp_path / "tokenizer.model")


def test_prompt_formats_are_the_references(paligemma_like):
    tok = paligemma_like
    assert clean_prompt("  pick_up the\ncup ") == "pick up the cup"
    # pi0: BOS + prompt, then "\n" encoded on its own.
    assert prompt_token_ids(tok, "pick_up cup", None, pi05=False) == tok.encode(
        "pick up cup", add_bos=True
    ) + tok.encode("\n")
    state = np.array([-1.0, 0.0, 0.5, 0.9999])
    assert pi05_prompt_text("pick_up cup", state) == "Task: pick up cup, State: 0 128 192 255;\nAction: "
    assert prompt_token_ids(tok, "pick_up cup", state, pi05=True) == tok.encode(
        "Task: pick up cup, State: 0 128 192 255;\nAction: ", add_bos=True
    )
    with pytest.raises(ValueError, match="discretized state"):
        prompt_token_ids(tok, "x", None, pi05=True)


def test_a_pi05_model_without_discrete_state_input_gets_pi0_prompts():
    """openpi's `discrete_state_input=False`: no state anywhere, the prompt in pi0's form."""
    tok = EmbeddedTokenizer()
    state = np.array([0.3, -0.2])
    with_state = model_prompt(preset("pi05_tiny"), tok, "open the box", state)
    without = model_prompt(preset("pi05_tiny", discrete_state_input=False), tok, "open the box", state)
    assert tok.decode(with_state[0][with_state[1]].tolist()).startswith("Task: open the box, State: ")
    expected = tok.encode("open the box", add_bos=True) + tok.encode("\n")
    assert without[0][without[1]].tolist() == expected
    with pytest.raises(ValueError, match=r"pi0\.5 setting"):
        preset("pi0_tiny", discrete_state_input=True)


def test_state_bins_match_reference_and_are_clipped():
    state = np.array([-3.0, -1.0, -0.999, 0.0, 0.99, 1.0, 7.0])
    reference = np.digitize(state, bins=np.linspace(-1, 1, 257)[:-1]) - 1
    assert reference[0] == -1  # the reference's defect
    assert discretize_state(state).tolist() == np.clip(reference, 0, 255).tolist()
    assert discretize_state(state).tolist() == [0, 0, 0, 128, 254, 255, 255]


def test_padding_and_truncation(caplog):
    tok = EmbeddedTokenizer()
    tokens, mask = tokenize_prompt(tok, "hi", None, pi05=False, max_len=8)
    assert tokens.dtype == np.int64 and mask.dtype == bool
    assert tokens.tolist() == [tok.bos_id, *tok.encode("hi"), *tok.encode("\n"), 0, 0, 0, 0]
    assert mask.tolist() == [True] * 4 + [False] * 4
    tokens, mask = tokenize_prompt(tok, "a long prompt", None, pi05=False, max_len=5)
    assert mask.all() and len(tokens) == 5
    assert "truncated" in caplog.text


def test_embedded_words_are_single_tokens_and_numbers_digits():
    tok = EmbeddedTokenizer()
    prompt = "Task: Press a button from the top, State: 130 126 35 255;\nAction: "
    ids = tok.encode(prompt)
    assert tok.decode(ids) == prompt
    assert len(ids) == 31
    assert tok.encode(" 128") == [4 + b for b in b" 128"]
    assert len(tok.encode(" Drawer")) == 1 and len(tok.encode("drawer")) == 1
    assert tok.encode("zyxwv") == [4 + b for b in b"zyxwv"]  # unknown words fall back to bytes
    # A tokenizer saved with fewer words keeps every id of the shorter table.
    small = load_tokenizer(EmbeddedTokenizer(num_words=10).spec())
    assert small.vocab_size == tok.vocab_size - 4 * (tok.num_words - 10)
    assert small.encode("task 7") == tok.encode("task 7")
