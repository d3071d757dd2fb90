"""A small transformer language model and the WikiText-2 text it learns from, under Lightning's names.

Lightning downloads ``wikitext-2.txt`` on first use; fulmen never reaches the network from a
library call, so the file must be there already (the error says where it is looked for and how
to fetch it).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from fulmen.module import LightningModule

__all__ = ["Dictionary", "LightningTransformer", "PositionalEncoding", "Transformer", "WikiText2", "tokenize"]

WIKITEXT2_URL = "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/train.txt"


class PositionalEncoding(nn.Module):
    """Adds fixed sine/cosine position signals to a ``(batch, time, dim)`` input, then dropout.

    The table is computed in ``forward`` for the length at hand: it holds no state, so nothing
    about it needs to be synchronised, sharded or saved.
    """

    def __init__(self, dim: int, dropout: float = 0.1, max_len: int = 5000) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.dim = dim
        self.max_len = max_len

    def forward(self, x: Tensor) -> Tensor:
        length = x.size(1)
        if length > self.max_len:
            raise ValueError(f"A sequence of length {length} is longer than `max_len={self.max_len}`.")
        position = torch.arange(length, dtype=torch.float32, device=x.device).unsqueeze(1)
        frequency = torch.exp(
            torch.arange(0, self.dim, 2, dtype=torch.float32, device=x.device) * (-math.log(10000.0) / self.dim)
        )
        table = torch.zeros(length, self.dim, device=x.device)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency)[:, : self.dim // 2]
        return self.dropout(x + table.to(x.dtype))


class Transformer(nn.Module):
    """Encoder-decoder ``nn.Transformer`` over token ids; returns log-probabilities ``(batch * time, vocab)``."""

    def __init__(
        self,
        vocab_size: int = 33278,
        ninp: int = 200,
        nhead: int = 2,
        nhid: int = 200,
        nlayers: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.pos_encoder = PositionalEncoding(ninp, dropout)
        self.embedding = nn.Embedding(vocab_size, ninp)
        self.transformer = nn.Transformer(
            d_model=ninp,
            nhead=nhead,
            num_encoder_layers=nlayers,
            num_decoder_layers=nlayers,
            dim_feedforward=nhid,
            dropout=dropout,
            batch_first=True,
        )
        self.decoder = nn.Linear(ninp, vocab_size)
        self.ninp = ninp
        self.vocab_size = vocab_size

    def forward(self, inputs: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        # ``target`` is the input shifted by one token; the causal mask keeps the decoder from peeking.
        length = target.size(1)
        if mask is None:
            mask = nn.Transformer.generate_square_subsequent_mask(length, device=inputs.device)
        scale = math.sqrt(self.ninp)
        source = self.pos_encoder(self.embedding(inputs) * scale)
        shifted = self.pos_encoder(self.embedding(target) * scale)
        output = self.decoder(self.transformer(source, shifted, tgt_mask=mask))
        return F.log_softmax(output, dim=-1).view(-1, self.vocab_size)


class Dictionary:
    """Words to ids and back, in order of first appearance."""

    def __init__(self) -> None:
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []

    def add_word(self, word: str) -> int:
        if word not in self.word2idx:
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return self.word2idx[word]

    def __len__(self) -> int:
        return len(self.idx2word)


def tokenize(path: Path) -> tuple[Tensor, Dictionary]:
    """All words of a text file as one id tensor (an ``<eos>`` after each line) and their dictionary."""
    dictionary = Dictionary()
    ids: list[int] = []
    with open(path, encoding="utf8") as text:
        for line in text:
            ids.extend(dictionary.add_word(word) for word in [*line.split(), "<eos>"])
    return torch.tensor(ids, dtype=torch.int64), dictionary


def missing_data_message(what: str, path: Path | str, how: str) -> str:
    return (
        f"{what} not found at '{path}'. fulmen's demos never download: {how}"
        " (or pass the folder that holds it as `data_dir`)."
    )


class WikiText2(Dataset):
    """WikiText-2's training text as ``(inputs, target)`` blocks of ``block_size`` tokens, target shifted by one.

    Reads ``data_dir / "wikitext-2.txt"``. ``download`` is accepted for Lightning's signature; the
    file is never fetched here.
    """

    def __init__(self, data_dir: Path | str = Path("./data"), block_size: int = 35, download: bool = True) -> None:
        super().__init__()
        if block_size < 1:
            raise ValueError(f"`block_size={block_size}` must be a positive number of tokens.")
        self.path = Path(data_dir) / "wikitext-2.txt"
        if not self.path.is_file():
            raise FileNotFoundError(
                missing_data_message(
                    "WikiText-2", self.path, f"fetch it once with `curl -L -o {self.path} {WIKITEXT2_URL}`"
                )
            )
        self.data, self.dictionary = tokenize(self.path)
        self.block_size = block_size

    @property
    def vocab_size(self) -> int:
        return len(self.dictionary)

    def __len__(self) -> int:
        return len(self.data) // self.block_size - 1

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        start = index * self.block_size
        end = start + self.block_size
        return self.data[start:end], self.data[start + 1 : end + 1]


class LightningTransformer(LightningModule):
    """``Transformer`` trained on WikiText-2 with SGD (lr 0.1) and NLL loss."""

    def __init__(self, vocab_size: int = 33278) -> None:
        super().__init__()
        self.model = Transformer(vocab_size=vocab_size)

    def forward(self, inputs: Tensor, target: Tensor) -> Tensor:
        return self.model(inputs, target)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, target = batch
        return F.nll_loss(self(inputs, target), target.view(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=0.1)

    def prepare_data(self) -> None:
        WikiText2()  # fails early, on one process, when the text is missing

    def train_dataloader(self) -> DataLoader:
        return DataLoader(WikiText2())
