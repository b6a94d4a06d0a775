"""Tabular encoder: an MLP over standardised numerics and categorical embeddings, plus one token
per feature (FT-Transformer's feature tokenizer) for token-level fusions."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from autofuse.encoders.base import Encoder, EncoderSpec, register_encoder
from autofuse.errors import ConfigError
from autofuse.types import FeatureShape, ModalityFeatures


@register_encoder(
    "tabular.mlp",
    modality="tabular",
    modes=("scratch",),
    space={
        "dim": [32, 64, 128],
        "hidden": [64, 128, 256],
        "depth": {"low": 1, "high": 3},
        "dropout": {"low": 0.0, "high": 0.3},
    },
    description="MLP over standardised numerics + categorical embeddings; one token per feature",
)
class TabularMLP(Encoder):
    """MLP encoder for a tabular modality.

    Inputs: ``{"numeric": [B, F], "categorical": [B, C]}`` (see ``preprocess.py``: numerics
    standardised with missing values set to 0 plus indicator columns; category index 0 =
    unseen / missing).

    pooled = MLP output ``[B, dim]``; tokens = one ``dim``-wide token per feature, ``x_j * W_j +
    b_j`` for numerics and an embedding for categoricals ``[B, F + C, dim]``; levels = the feature
    tokens, then each hidden layer as one token.

    Params:
        hidden: MLP width; depth: hidden layers (>= 1); dropout; cat_dim: width of the
        categorical embeddings fed to the MLP.
    """

    input_kind = "tabular"
    defaults: ClassVar[dict[str, Any]] = {"hidden": 128, "depth": 2, "dropout": 0.1, "cat_dim": 8}

    def __init__(self, spec: EncoderSpec, state: dict) -> None:
        super().__init__(spec, state)
        p = self.params
        dim, hidden, depth = spec.dim, int(p["hidden"]), int(p["depth"])
        if depth < 1:
            raise ConfigError("tabular.mlp: depth must be >= 1")
        n_num = len(self.state.get("numeric", [])) + len(self.state.get("indicators", []))
        cards = [len(v) + 1 for v in self.state.get("categorical", {}).values()]  # + unseen/missing
        if n_num + len(cards) == 0:
            raise ConfigError("tabular.mlp: the modality has no columns")
        self.n_num = n_num
        # feature tokenizer (tokens): per numeric feature a weight and bias vector
        self.num_weight = nn.Parameter(torch.randn(n_num, dim) * 0.02)
        self.num_bias = nn.Parameter(torch.zeros(n_num, dim))
        self.cat_tokens = nn.ModuleList(nn.Embedding(c, dim) for c in cards)
        self.cat_bias = nn.Parameter(torch.zeros(len(cards), dim))
        # MLP (pooled)
        cat_dim = int(p["cat_dim"])
        self.cat_embeds = nn.ModuleList(nn.Embedding(c, cat_dim) for c in cards)
        blocks = []
        d = n_num + cat_dim * len(cards)
        for _ in range(depth):
            blocks.append(
                nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(float(p["dropout"])))
            )
            d = hidden
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Linear(d, dim)
        self.feature_shape = FeatureShape(
            dim=dim,
            n_tokens=n_num + len(cards),
            levels=((n_num + len(cards), dim),) + tuple((1, hidden) for _ in range(depth)),
        )

    def forward(self, x: dict[str, torch.Tensor], present: torch.Tensor) -> ModalityFeatures:
        x, present = self._to_device(x), self._to_device(present)
        num = x["numeric"].float()  # [B, F]
        cat = x["categorical"].long()  # [B, C]
        B = num.shape[0]
        toks = [num[:, :, None] * self.num_weight + self.num_bias]  # [B, F, dim]
        toks += [
            emb(cat[:, j])[:, None] + self.cat_bias[j] for j, emb in enumerate(self.cat_tokens)
        ]
        tokens = torch.cat(toks, dim=1)  # [B, F + C, dim]
        h = torch.cat(
            [num.reshape(B, -1)] + [emb(cat[:, j]) for j, emb in enumerate(self.cat_embeds)], dim=-1
        )  # [B, F + C * cat_dim]
        levels = [tokens]
        for block in self.blocks:
            h = block(h)  # [B, hidden]
            levels.append(h[:, None])  # [B, 1, hidden]
        pooled = self.out(h)  # [B, dim]
        return self.finalize(pooled, tokens, levels, present)
