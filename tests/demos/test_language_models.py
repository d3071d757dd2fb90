"""Transformer, WikiText2 and the LSTM demo: local text only, with a clear error when it is missing."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import fulmen as L
from fulmen.demos import LightningLSTM, LightningTransformer, SequenceSampler, SimpleLSTM, Transformer, WikiText2
from fulmen.demos.transformer import PositionalEncoding, tokenize

TEXT = "the cat sat on the mat\nthe dog sat on the log\n" * 40


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "wikitext-2.txt").write_text(TEXT)
    return tmp_path


def test_tokenize_adds_eos_and_counts_words(data_dir):
    ids, dictionary = tokenize(data_dir / "wikitext-2.txt")
    assert dictionary.idx2word[:6] == ["the", "cat", "sat", "on", "mat", "<eos>"]
    assert len(dictionary) == 8 and ids.dtype == torch.int64 and len(ids) == 7 * 80
    assert dictionary.word2idx["dog"] == 6


def test_wikitext2_blocks_are_shifted_by_one(data_dir):
    dataset = WikiText2(data_dir=data_dir, block_size=5)
    assert dataset.vocab_size == 8 and len(dataset) == 560 // 5 - 1
    inputs, target = dataset[2]
    assert torch.equal(inputs[1:], target[:-1]) and torch.equal(inputs, dataset.data[10:15])


def test_wikitext2_missing_file_names_path_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        WikiText2(data_dir=tmp_path / "nowhere")
    message = str(error.value)
    assert str(tmp_path / "nowhere" / "wikitext-2.txt") in message and "curl" in message
    with pytest.raises(ValueError, match="block_size=0"):
        WikiText2(data_dir=tmp_path, block_size=0)


def test_positional_encoding_adds_position_signal():
    encoding = PositionalEncoding(dim=6, dropout=0.0)
    out = encoding(torch.zeros(2, 4, 6))
    assert torch.allclose(out[:, 0, 1::2], torch.ones(2, 3))  # cos(0) = 1 at position 0
    assert not torch.equal(out[:, 1], out[:, 0])
    with pytest.raises(ValueError, match="max_len=5000"):
        encoding(torch.zeros(1, 5001, 6))


def test_transformer_learns_the_local_text(data_dir, tmp_path):
    torch.manual_seed(0)
    dataset = WikiText2(data_dir=data_dir, block_size=8)
    model = Transformer(vocab_size=dataset.vocab_size, ninp=16, nhead=2, nhid=32, nlayers=1, dropout=0.0)
    inputs, target = next(iter(DataLoader(dataset, batch_size=4)))
    assert model(inputs, target).shape == (4 * 8, dataset.vocab_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for inputs, target in DataLoader(dataset, batch_size=8, shuffle=True):
        loss = torch.nn.functional.nll_loss(model(inputs, target), target.view(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2


def test_lightning_transformer_trains_with_the_trainer(data_dir, monkeypatch):
    monkeypatch.chdir(data_dir.parent)
    (data_dir.parent / "data").mkdir(exist_ok=True)
    (data_dir.parent / "data" / "wikitext-2.txt").write_text(TEXT)  # its loader reads ./data
    model = LightningTransformer(vocab_size=8)
    assert isinstance(model.configure_optimizers(), torch.optim.SGD)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(model)
    assert trainer.global_step == 3


def test_sequence_sampler_rows_continue_across_batches():
    sampler = SequenceSampler(list(range(23)), batch_size=4)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 5
    assert batches[0] == [0, 5, 10, 15] and batches[1] == [1, 6, 11, 16]
    with pytest.raises(ValueError, match="batch_size=0"):
        SequenceSampler(list(range(3)), batch_size=0)


def test_lstm_shapes_and_hidden_state(data_dir, monkeypatch):
    model = SimpleLSTM(vocab_size=8, ninp=6, nhid=5, nlayers=2)
    hidden = model.init_hidden(3)
    assert hidden[0].shape == (2, 3, 5)
    log_probs, (h, c) = model(torch.zeros(3, 4, dtype=torch.long), hidden)
    assert log_probs.shape == (12, 8) and h.shape == (2, 3, 5)
    lightning_lstm = LightningLSTM(vocab_size=8)
    assert lightning_lstm.model.nlayers == 4 and lightning_lstm.hidden is None
