"""Dict batches and a step function: a token tagger on generated sequences of variable length.

Each item is a dict ``{"tokens": LongTensor[L], "tags": LongTensor[L]}`` with L from 4 to 24;
``collate`` pads a batch and adds a mask, ``TokenTagger`` (an embedding and two convolutions)
takes the tokens, and ``step`` returns the masked cross-entropy with the counts of a token
accuracy, ``(loss, correct_tokens, tokens)``, so the report shows token accuracy.

Study file: ``token_tagger.toml`` beside this module (``data.collate``, ``train.step``). From
Python::

    import tuner
    from token_tagger import collate, data, make_model, step

    train, val, test = data()
    result = tuner.tune(make_model, train, val, tuner.load_study("token_tagger.toml"),
                        test_set=test, step_fn=step, collate_fn=collate)
    print(result.test_loss, result.metric)  # per token

A token's tag is (its value + the previous token's value) mod 3, or a random tag for one token
in ten: the model must look at its neighbour, and cannot be right everywhere. The data is
generated (seeded), so nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

VOCAB, TAGS, PAD = 32, 3, 0  # tokens are 1 .. VOCAB - 1; 0 pads


class Sequences(Dataset):
    """``n`` random token sequences and their tags, as dict items."""

    def __init__(self, n: int, seed: int, min_len: int = 4, max_len: int = 24,
                 noise: float = 0.1) -> None:
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
        self.items = []
        for length in lengths:
            tokens = torch.randint(1, VOCAB, (length,), generator=g)
            previous = torch.cat([torch.zeros(1, dtype=torch.long), tokens[:-1]])
            tags = (previous + tokens) % TAGS
            flip = torch.rand(length, generator=g) < noise  # a random tag instead
            tags[flip] = torch.randint(0, TAGS, (int(flip.sum()),), generator=g)
            self.items.append({"tokens": tokens, "tags": tags})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def data(seed: int = 0) -> tuple[Sequences, Sequences, Sequences]:
    """``data.name = "token_tagger:data"``: (train, val, test) datasets of dict items."""
    return Sequences(1200, seed), Sequences(400, seed + 1), Sequences(400, seed + 2)


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``data.collate = "token_tagger:collate"``: pad to the batch's longest sequence;
    ``mask`` is True on real tokens."""
    tokens = nn.utils.rnn.pad_sequence([it["tokens"] for it in items], batch_first=True,
                                       padding_value=PAD)
    tags = nn.utils.rnn.pad_sequence([it["tags"] for it in items], batch_first=True)
    return {"tokens": tokens, "tags": tags, "mask": tokens != PAD}


class TokenTagger(nn.Module):
    """Tokens N x L -> tag logits N x L x TAGS: an embedding, then convolutions over 3 tokens."""

    def __init__(self, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.conv = nn.Conv1d(dim, hidden, kernel_size=3, padding=1)
        self.out = nn.Conv1d(hidden, TAGS, kernel_size=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens).transpose(1, 2)  # N x dim x L
        return self.out(F.relu(self.conv(h))).transpose(1, 2)


def make_model(dim: int = 32, hidden: int = 64) -> nn.Module:
    """``model.name = "token_tagger:make_model"``."""
    return TokenTagger(dim, hidden)


def step(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``train.step = "token_tagger:step"``: the mean cross-entropy over real tokens, and the
    token accuracy's counts (correct tokens, tokens): the tool sums both over an evaluation."""
    logits = model(batch["tokens"])
    mask = batch["mask"]
    logits, tags = logits[mask], batch["tags"][mask]
    loss = F.cross_entropy(logits.float(), tags)
    correct = (logits.detach().argmax(-1) == tags).sum()
    return loss, correct, tags.numel()
