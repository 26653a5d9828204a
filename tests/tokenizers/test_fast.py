from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import tokenizers

from vlaflow.cli import main
from vlaflow.data.fast_fit import fit_from_datasets
from vlaflow.data.lerobot import LeRobotDatasetWriter
from vlaflow.data.pipeline import SourceConfig, load_stats
from vlaflow.tokenizers import EmbeddedTokenizer, FastIdRange, FastTokenizer, PaliGemmaTokenizer
from vlaflow.tokenizers.fast import dct, idct

H, D, SCALE = 20, 4, 10.0


def smooth_chunks(n: int, seed: int = 0, horizon: int = H, dim: int = D) -> np.ndarray:
    """Slow sinusoids in [-0.9, 0.9]: what normalized robot actions look like."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, horizon)[None, :, None]
    freq, phase = rng.uniform(0.1, 0.8, (n, 1, dim)), rng.uniform(0, 2 * np.pi, (n, 1, dim))
    return (0.9 * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


@pytest.fixture(scope="module")
def fitted() -> FastTokenizer:
    return FastTokenizer.fit(smooth_chunks(400), vocab_size=512, scale=SCALE)


def test_dct_is_scipys_orthonormal_dct_ii():
    fft = pytest.importorskip("scipy.fft")
    x = np.random.default_rng(0).normal(size=(3, H, D))
    np.testing.assert_allclose(dct(x), fft.dct(x, axis=1, norm="ortho"), atol=1e-12)
    np.testing.assert_allclose(idct(dct(x)), x, atol=1e-12)


def test_round_trip_error_is_bounded_by_the_quantization(fitted):
    chunks = smooth_chunks(50, seed=1)
    decoded, ok = fitted.decode(fitted.encode(chunks))
    assert ok.all() and decoded.dtype == np.float32 and decoded.shape == chunks.shape
    # Exactly the rounded coefficients, back through the inverse DCT.
    expected = idct(np.rint(dct(chunks.astype(np.float64)) * SCALE) / SCALE)
    np.testing.assert_allclose(decoded, expected, atol=1e-5)
    # Each coefficient is off by at most 0.5 / scale; the DCT is orthonormal.
    step = 0.5 / SCALE
    assert np.sqrt(((decoded - chunks) ** 2).mean(axis=1)).max() <= step + 1e-6
    assert np.abs(decoded - chunks).max() <= step * np.sqrt(H) + 1e-6


def values_of(tokenizer: FastTokenizer, ids: list[int]) -> np.ndarray:
    return np.array([ord(c) for c in tokenizer.bpe.decode(ids)]) + tokenizer.min_token


def test_lowest_frequencies_of_all_dims_come_first(fitted):
    t = np.arange(H)
    chunk = np.zeros((H, D))
    chunk[:, 0] = 0.5  # frequency 0 only
    chunk[:, 2] = 0.4 * np.cos(np.pi * (2 * t + 1) * 3 / (2 * H))  # frequency 3 only
    values = values_of(fitted, fitted.encode(chunk)[0])
    expected = np.zeros(H * D, dtype=int)
    expected[0 * D + 0] = round(0.5 * np.sqrt(H) * SCALE)
    expected[3 * D + 2] = round(0.4 * np.sqrt(H / 2) * SCALE)
    np.testing.assert_array_equal(values, expected)


def test_smooth_chunks_take_far_fewer_tokens_than_binning(fitted):
    lengths = [len(ids) for ids in fitted.encode(smooth_chunks(100, seed=2))]
    assert np.mean(lengths) < H * D / 4
    assert max(fitted.encode(smooth_chunks(100, seed=2))[0]) < fitted.vocab_size


def test_a_malformed_sequence_is_a_reported_failure_never_zeros(fitted):
    good = fitted.encode(smooth_chunks(1, seed=3))[0]
    bad = [
        good[:-1],  # truncated
        [*good, good[-1]],  # too long
        [],
        [*good[:-1], fitted.vocab_size + 5],  # id outside the vocabulary
        [-1, *good[1:]],
    ]
    actions, ok = fitted.decode([good, *bad, good])
    assert ok.tolist() == [True, False, False, False, False, False, True]
    assert np.isnan(actions[1:-1]).all() and np.isfinite(actions[[0, -1]]).all()


def test_out_of_range_coefficients_are_clipped_and_counted(fitted):
    chunk = smooth_chunks(1, seed=4)[0]
    far = chunk.copy()
    far[:, 1] = 50.0  # normalization gone wrong: far beyond the fitted range
    counts = fitted.out_of_range_counts(np.stack([chunk, far]))
    assert counts[0] == 0 and counts[1] >= 1
    decoded, ok = fitted.decode(fitted.encode(far))
    assert ok.all() and decoded[0, :, 1].max() < 50.0


def test_bad_inputs_are_value_errors(fitted):
    with pytest.raises(ValueError, match=r"\(H, D\) = \(20, 4\)"):
        fitted.encode(np.zeros((H, D + 1)))
    with pytest.raises(ValueError, match="NaN"):
        fitted.encode(np.full((H, D), np.nan))
    with pytest.raises(ValueError, match="raise vocab_size"):
        FastTokenizer.fit(smooth_chunks(50) * 20, vocab_size=64)


def test_save_load_round_trip_gives_identical_encodings(fitted, tmp_path):
    fitted.save(tmp_path / "fast")
    config = json.loads((tmp_path / "fast" / "fast_config.json").read_text())
    assert config["action_horizon"] == H and config["action_dim"] == D and config["scale"] == SCALE
    loaded = FastTokenizer.load(tmp_path / "fast")
    chunks = smooth_chunks(30, seed=5)
    assert loaded.encode(chunks) == fitted.encode(chunks)
    with pytest.raises(ValueError, match="action_horizon=10 differs from 20"):
        FastTokenizer.load(tmp_path / "fast", action_horizon=10)
    with pytest.raises(FileNotFoundError, match=r"processor_config\.json"):
        FastTokenizer.load(tmp_path)


PUBLIC_MIN_TOKEN = -354  # the released universal tokenizer's: a zero coefficient is chr(354), 2 UTF-8 bytes


def write_public_layout(directory: Path, chunks: np.ndarray, vocab_size: int = 512) -> None:
    """A directory laid out as the public FAST processor's (physical-intelligence/fast): a byte-level
    BPE in `tokenizer.json` as `transformers`' PreTrainedTokenizerFast saves it, its
    `processor_config.json` with no recorded chunk shape."""
    min_token = PUBLIC_MIN_TOKEN
    values = np.rint(dct(chunks.astype(np.float64)) * 10).astype(int).reshape(len(chunks), -1)
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    bpe.post_processor = tokenizers.processors.ByteLevel(trim_offsets=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[],
        initial_alphabet=[chr(v) for v in range(values.max() - min_token + 1)],
        show_progress=False,
    )
    bpe.train_from_iterator(("".join(map(chr, row - min_token)) for row in values), trainer=trainer)
    directory.mkdir()
    bpe.save(str(directory / "tokenizer.json"))
    processor_class = "UniversalActionProcessor"
    auto_map = {"AutoProcessor": f"processing_action_tokenizer.{processor_class}"}
    (directory / "processor_config.json").write_text(
        json.dumps(
            {
                "action_dim": None,
                "auto_map": auto_map,
                "min_token": min_token,
                "processor_class": processor_class,
                "scale": 10,
                "time_horizon": None,
                "vocab_size": vocab_size,
            }
        )
    )
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"processor_class": processor_class, "tokenizer_class": "PreTrainedTokenizerFast"})
    )
    (directory / "special_tokens_map.json").write_text("{}")


def test_the_public_processor_layout_loads(tmp_path):
    train = smooth_chunks(300, seed=6)
    write_public_layout(tmp_path / "fast", train)
    with pytest.raises(ValueError, match="no time_horizon"):
        FastTokenizer.load(tmp_path / "fast")
    tok = FastTokenizer.load(tmp_path / "fast", action_horizon=H, action_dim=D)
    assert (tok.scale, tok.vocab_size, tok.min_token) == (10.0, 512, PUBLIC_MIN_TOKEN)
    assert tok.max_token >= np.rint(dct(train.astype(np.float64)) * 10).max()
    chunks = smooth_chunks(20, seed=7)
    ids = tok.encode(chunks)
    # The public processor's encoding: shifted coefficients as characters, through its BPE.
    bpe = tokenizers.Tokenizer.from_file(str(tmp_path / "fast" / "tokenizer.json"))
    values = np.rint(dct(chunks.astype(np.float64)) * 10).astype(int).reshape(20, -1) - PUBLIC_MIN_TOKEN
    texts = ["".join(map(chr, row)) for row in values]
    assert ids == [bpe.encode(text).ids for text in texts]
    decoded, ok = tok.decode(ids)
    assert ok.all() and np.abs(decoded - chunks).max() <= 0.05 * np.sqrt(H) + 1e-6
    # Byte-level tokens can end inside a character: H * D characters, the last one broken, fail.
    lead_byte = chr(texts[0][-1].encode()[0])  # printable bytes are their own byte-level symbol
    cut = [*bpe.encode(texts[0][:-1]).ids, bpe.token_to_id(lead_byte)]
    assert len(bpe.decode(cut)) == H * D
    assert not tok.decode([cut])[1][0]


@pytest.fixture(scope="module")
def paligemma_with_loc_and_seg(tmp_path_factory) -> PaliGemmaTokenizer:
    """A tiny SentencePiece model with PaliGemma's special ids, <loc> and <seg> pieces."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["Action: move the arm to the left", "Task: stack the cups"] * 20),
        model_writer=buf,
        vocab_size=1200,
        model_type="bpe",
        user_defined_symbols=[f"<loc{i:04d}>" for i in range(1024)] + [f"<seg{i:03d}>" for i in range(128)],
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("paligemma") / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return PaliGemmaTokenizer(path)


@pytest.mark.parametrize("kind", ["paligemma", "embedded"])
def test_fast_ids_collide_with_no_text_loc_or_seg_id(kind, paligemma_with_loc_and_seg):
    text = paligemma_with_loc_and_seg if kind == "paligemma" else EmbeddedTokenizer()
    ids = FastIdRange.after(text, 1024)
    assert ids.offset == text.vocab_size and ids.vlm_vocab_size == text.vocab_size + 1024
    taken = {text.loc_id(v) for v in range(1024)}
    taken |= set(text.encode("Task: stack the cups, State: 1 2 3;\nAction: ", add_bos=True, add_eos=True))
    if kind == "paligemma":
        taken |= {text._sp.piece_to_id(f"<seg{i:03d}>") for i in range(128)}
    fast = ids.to_vlm(range(1024))
    assert not taken & set(fast) and max(taken) < min(fast) and fast[-1] == ids.vlm_vocab_size - 1
    assert ids.to_fast(fast) == list(range(1024))
    assert fast[0] in ids and text.loc_id(0) not in ids
    with pytest.raises(ValueError, match="outside the FAST range"):
        ids.to_fast([fast[0], text.loc_id(5)])
    with pytest.raises(ValueError, match=r"FAST id 1024 is outside the FAST range \[0, 1023\]"):
        ids.to_vlm([1024])


def test_with_paligemmas_real_vocabulary_fast_ids_follow_the_seg_tokens():
    class RealPaliGemmaSize:
        vocab_size = 257_152  # 256,000 text pieces, <loc0000>..<loc1023>, <seg000>..<seg127>

    ids = FastIdRange.after(RealPaliGemmaSize(), 1024)
    assert (ids.offset, ids.vlm_vocab_size) == (257_152, 258_176)


def write_lerobot_dataset(root: Path, episodes: int = 6, length: int = 40) -> Path:
    """Numeric columns only: smooth arm actions and the state that follows them."""
    rng = np.random.default_rng(0)
    features = {
        "observation.state": {"dtype": "float32", "shape": [3], "names": None},
        "action": {"dtype": "float32", "shape": [3], "names": None},
    }
    with LeRobotDatasetWriter(root, fps=10, features=features) as writer:
        for _ in range(episodes):
            t = np.linspace(0, 1, length)[:, None]
            action = np.sin(2 * np.pi * rng.uniform(0.2, 0.6, 3) * t + rng.uniform(0, 6, 3)) * [1, 2, 0.5]
            state = np.concatenate([action[:1], action[:-1]])
            writer.add_episode(
                {"observation.state": state.astype(np.float32), "action": action.astype(np.float32)},
                task="reach",
            )
    return root


@pytest.fixture(scope="module")
def lerobot_dataset(tmp_path_factory) -> Path:
    return write_lerobot_dataset(tmp_path_factory.mktemp("fast_data") / "arm")


def test_fit_from_datasets_reports_on_held_out_episodes(lerobot_dataset, tmp_path):
    report = fit_from_datasets(
        [SourceConfig(str(lerobot_dataset))],
        tmp_path / "fast",
        action_horizon=10,
        vocab_size=256,
        holdout_fraction=0.2,
    )
    assert (report.heldout_episodes, report.heldout_chunks, report.train_chunks) == (1, 40, 200)
    assert report.binning_tokens == 30 and report.mean_tokens < 15 and report.compression > 2
    assert (
        report.decoding_failures == 0 and report.rmse <= 0.05 and report.max_abs_error <= 0.05 * np.sqrt(10)
    )
    assert {p.name for p in (tmp_path / "fast").iterdir()} == {
        "tokenizer.json",
        "fast_config.json",
        "norm_stats.json",
        "fit_report.json",
        # the public FAST processor's files (`AutoProcessor.from_pretrained`)
        "processor_config.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "processing_action_tokenizer.py",
    }
    stats = load_stats(tmp_path / "fast" / "norm_stats.json")["arm"]
    assert stats.action_horizon == 10 and stats.actions.dim == 3
    assert FastTokenizer.load(tmp_path / "fast").action_horizon == 10
    with pytest.raises(ValueError, match="holdout_fraction"):
        fit_from_datasets([SourceConfig(str(lerobot_dataset))], tmp_path / "x", holdout_fraction=1.0)


def test_fast_fit_command_end_to_end(lerobot_dataset, tmp_path, capsys):
    out = tmp_path / "fast"
    args = ["fast", "fit", str(lerobot_dataset), "--output", str(out), "--action-horizon", "10"]
    assert main([*args, "--vocab-size", "256", "--normalization", "zscore"]) == 0
    printed = capsys.readouterr().out
    assert "tokens per held-out chunk: mean" in printed and "binning: 30" in printed
    assert "decoding failures: 0 of" in printed and "RMSE" in printed
    assert FastTokenizer.load(out).vocab_size == 256
    assert main([*args, "--vocab-size", "4"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("vlaflow fast: error: vocab_size=4") and error.count("\n") == 1


def test_a_saved_tokenizer_loads_as_the_public_processor(tmp_path):
    """`AutoProcessor.from_pretrained(DIR, trust_remote_code=True)` (what users of the public FAST
    processor call) loads a tokenizer vlaflow fitted: the same ids, the same decoded chunks."""
    auto = pytest.importorskip("transformers").AutoProcessor
    tok = FastTokenizer.fit(smooth_chunks(300, seed=8), vocab_size=300)
    tok.save(tmp_path / "fitted")
    processor = auto.from_pretrained(str(tmp_path / "fitted"), trust_remote_code=True)
    assert type(processor).__name__ == "UniversalActionProcessor"
    chunks = smooth_chunks(6, seed=9)
    ids = processor(chunks)
    assert ids == tok.encode(chunks)
    ours, ok = tok.decode(ids)
    assert ok.all()
    np.testing.assert_allclose(processor.decode(ids), ours, atol=1e-6)
    assert FastTokenizer.load(tmp_path / "fitted").encode(chunks) == ids  # our own loader still reads it


def test_the_reference_fast_layout_counts_down_from_below_paligemmas_last_128_ids():
    from vlaflow.models import reference_config

    config = reference_config(pi05=True).replace(expert=None, fast_vocab_size=1024, fast_ids="reference")
    ids = FastIdRange.for_model(config)
    # openpi: paligemma vocab_size - 1 - 128 - k
    assert ids.to_vlm([0, 1, 1023]) == [257_152 - 1 - 128, 257_152 - 2 - 128, 257_152 - 1 - 128 - 1023]
    assert ids.to_fast(ids.to_vlm([5, 700])) == [5, 700]
    assert 257_023 in ids and 257_024 not in ids and 257_023 - 1024 not in ids
    assert config.embedding_rows == 257_152  # no rows of its own
    with pytest.raises(ValueError, match="outside the FAST range"):
        ids.to_fast([257_024])
    appended = FastIdRange.for_model(config.replace(fast_ids="appended"))
    assert appended.to_vlm([0]) == [257_152] and config.replace(fast_ids="appended").embedding_rows == 258_176


def test_the_reference_fast_prompt_is_lower_cased():
    from vlaflow.models import preset
    from vlaflow.tokenizers import model_prompt

    config = preset("pi0fast_tiny")
    state = np.zeros(3)
    ours = model_prompt(config, EmbeddedTokenizer(), "Pick UP the Cup", state)
    reference_config = config.replace(fast_ids="reference")
    reference = model_prompt(reference_config, EmbeddedTokenizer(), "Pick UP the Cup", state)
    lower = model_prompt(config, EmbeddedTokenizer(), "pick up the cup", state)
    assert not np.array_equal(ours[0], reference[0]) and np.array_equal(reference[0], lower[0])
