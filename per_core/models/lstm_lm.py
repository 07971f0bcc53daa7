r"""Two-layer LSTM language model (PER's Table 3 [1]_): optional tied embeddings and variational dropout.

embedding (size = hidden) -> locked dropout -> LSTM 1 -> locked dropout -> LSTM 2 -> locked dropout ->
linear decoder to the vocabulary. The four variants of Table 3 are:

- LSTM: ``lstm_lm(V)`` (no dropout);
- RE-LSTM: ``tied=True``, the decoder reuses the embedding matrix (Inan et al. [4]_, Press & Wolf);
- VD-LSTM: ``dropout=p``, variational dropout (Gal & Ghahramani [3]_): one dropout mask per sequence,
  the same at every time step (Merity et al.'s ``LockedDropout`` [2]_), on the embeddings, between the
  layers and on the output; ``dropout_embed`` adds embedding dropout (whole words) [2]_ [3]_;
- RE-VD-LSTM: both.

The recurrent connections are not dropped (neither Gal & Ghahramani's recurrent mask nor Merity et
al.'s weight drop), so each layer is a plain ``nn.LSTM`` whose output sequence PER can hook.
``norm='rbn'`` (or ``'bn'``) replaces each layer by
:class:`~per_core.baselines.RecurrentBatchNormLSTM` (recurrent batch norm, the Table 3 baseline).

Initialization as in Merity et al.'s code: embedding and decoder weights uniform in [-0.1, 0.1], decoder
bias 0, LSTM weights as ``nn.LSTM`` (uniform in :math:`\pm 1/\sqrt{H}`).

``pre_activations()``: ``{"lstm1": ..., "lstm2": ...}``, the LSTM modules; PER and the recorder use their
first output, the hidden-state sequence (T, N, H) before dropout, each time step a sample.

Parameter counts (650 units, 2 layers; an LSTM layer has 4H(I + H) weights and two 4H biases):

    ============  ==========  ==========  ===========
    vocabulary    untied      tied        rbn, untied
    ============  ==========  ==========  ===========
    10,000 (PTB)  19,780,400  13,280,400  19,788,200
    33,278 (WT2)  50,065,078  28,434,378  50,072,878
    ============  ==========  ==========  ===========

(Recurrent BN adds 3,900 per layer: three gains and one shift, 4H + 4H + H + H, against the second 4H
bias that ``nn.LSTM`` carries.)

References
----------
.. [1] Joo, T., Kang, D., Kim, B. "Regularizing activations in neural networks via distribution
   matching with the Wasserstein metric", ICLR 2020 (Table 3).
.. [2] Merity, S., Keskar, N. S., Socher, R. "Regularizing and optimizing LSTM language models",
   ICLR 2018, arXiv:1708.02182.
.. [3] Gal, Y., Ghahramani, Z. "A theoretically grounded application of dropout in recurrent neural
   networks", NeurIPS 2016.
.. [4] Inan, H., Khosravi, K., Socher, R. "Tying word vectors and word classifiers", ICLR 2017.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from per_core.baselines import RecurrentBatchNormLSTM

__all__ = ["LSTMLanguageModel", "LockedDropout", "embedding_dropout", "lstm_lm"]

Norm = Literal["none", "rbn", "bn"]
Hidden = list[tuple[Tensor, Tensor]]


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence, shared by all time steps, on (T, N, H) inputs."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = x.new_empty(1, x.shape[1], x.shape[2]).bernoulli_(1 - self.p) / (1 - self.p)  # (1, N, H)
        return x * mask  # the same mask at every step t

    def extra_repr(self) -> str:
        return f"p={self.p}"


def embedding_dropout(embed: nn.Embedding, tokens: Tensor, p: float, training: bool) -> Tensor:
    """Look up ``tokens`` with whole rows (words) of the embedding dropped with probability p, rescaled.

    A dropped word is zero everywhere it occurs in the batch (Gal & Ghahramani; Merity et al.).
    """
    if not training or p == 0.0:
        return embed(tokens)
    w = embed.weight
    mask = w.new_empty(w.shape[0], 1).bernoulli_(1 - p) / (1 - p)  # (vocab, 1)
    return F.embedding(tokens, w * mask)  # (T, N) -> (T, N, H)


class LSTMLanguageModel(nn.Module):
    """Multi-layer LSTM language model (see the module docstring); time-major tokens (T, N)."""

    def __init__(
        self,
        vocab_size: int,
        hidden: int = 650,
        layers: int = 2,
        tied: bool = False,
        dropout: float = 0.0,
        dropout_input: float | None = None,
        dropout_hidden: float | None = None,
        dropout_embed: float = 0.0,
        norm: Norm = "none",
        max_steps: int = 100,
    ) -> None:
        super().__init__()
        if norm not in ("none", "rbn", "bn"):
            raise ValueError(f"norm must be 'none' or 'rbn' (recurrent BN; 'bn' means the same), got {norm!r}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        if not 0.0 <= dropout_embed < 1.0:
            raise ValueError(f"dropout_embed must be in [0, 1), got {dropout_embed}")
        self.vocab_size = vocab_size
        self.hidden = hidden
        self.dropout_embed = dropout_embed
        self.encoder = nn.Embedding(vocab_size, hidden)
        self.drop_input = LockedDropout(dropout if dropout_input is None else dropout_input)
        self.drop_hidden = LockedDropout(dropout if dropout_hidden is None else dropout_hidden)
        self.drop_output = LockedDropout(dropout)
        self.rnns = nn.ModuleList(
            nn.LSTM(hidden, hidden) if norm == "none" else RecurrentBatchNormLSTM(hidden, hidden, max_steps)
            for _ in range(layers)
        )
        self.decoder = nn.Linear(hidden, vocab_size)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tied:
            self.decoder.weight = self.encoder.weight  # one parameter, shared storage
        else:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def init_hidden(self, batch_size: int) -> Hidden:
        """Zero (h, c) for every layer, each (1, batch_size, hidden), on the model's device and dtype."""
        w = self.decoder.bias
        return [(w.new_zeros(1, batch_size, self.hidden), w.new_zeros(1, batch_size, self.hidden)) for _ in self.rnns]

    @staticmethod
    def detach_hidden(hidden: Hidden) -> Hidden:
        """Cut the graph between BPTT segments (truncated backpropagation)."""
        return [(h.detach(), c.detach()) for h, c in hidden]

    def forward(self, tokens: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        """tokens (T, N) int64 -> logits (T, N, vocab_size) and the new hidden state (one (h, c) per layer)."""
        x = self.drop_input(embedding_dropout(self.encoder, tokens, self.dropout_embed, self.training))  # (T, N, H)
        new_hidden = []
        for i, rnn in enumerate(self.rnns):
            x, hc = rnn(x, None if hidden is None else hidden[i])  # (T, N, H)
            new_hidden.append(hc)
            x = self.drop_hidden(x) if i < len(self.rnns) - 1 else self.drop_output(x)
        return self.decoder(x), new_hidden  # (T, N, H) -> (T, N, vocab_size)

    def pre_activations(self) -> dict[str, nn.Module]:
        """label -> LSTM layer whose output sequence PER and the recorder see, in depth order."""
        return {f"lstm{i + 1}": rnn for i, rnn in enumerate(self.rnns)}


def lstm_lm(
    vocab_size: int,
    hidden: int = 650,
    layers: int = 2,
    tied: bool = False,
    dropout: float = 0.0,
    dropout_input: float | None = None,
    dropout_hidden: float | None = None,
    dropout_embed: float = 0.0,
    norm: Norm = "none",
    max_steps: int = 100,
) -> LSTMLanguageModel:
    """LSTM LM: 19,780,400 parameters for PTB (10,000 words) untied, 13,280,400 tied (650 units, 2 layers).

    ``dropout`` is the locked-dropout probability of all three sites unless ``dropout_input`` /
    ``dropout_hidden`` override the embedding and between-layer sites; ``max_steps`` is the number of
    time steps with their own statistics for ``norm='rbn'``.
    """
    return LSTMLanguageModel(
        vocab_size, hidden, layers, tied, dropout, dropout_input, dropout_hidden, dropout_embed, norm, max_steps
    )
