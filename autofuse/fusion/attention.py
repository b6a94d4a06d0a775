"""Attention family: self-, cross-, single-stream and multi-stream attention over modality tokens.

Every method reads token sequences at the fusion point (:func:`select_point`), projects each
modality's tokens to a common width ``d_model`` (one Linear per modality and per selected tensor;
at ``hybrid`` the projected tensors are concatenated along N) and marks a token valid when it is a
real token (``token_mask``) of a present modality (``present``).

Absent modalities never leak into other modalities or other rows: their tokens are masked out of
every attention as keys, and their own outputs are dropped before pooling. A row where *all* keys
of an attention are masked would make softmax return NaN, so :func:`key_padding_mask` unmasks such
rows and the caller discards what they produce.
"""

from __future__ import annotations

import torch
from torch import nn

from autofuse.fusion.base import (
    Fusion,
    masked_mean,
    mlp,
    point_shapes,
    register_fusion,
    select_point,
)
from autofuse.types import FeatureShape, FusionOutput, ModalityFeatures

ATTENTION_POINTS = ("early", "mid", "late", "hybrid")

# d_model and heads are chosen so every combination divides evenly.
ATTENTION_SPACE = {
    "d_model": [32, 64, 128],
    "heads": [2, 4],
    "layers": {"low": 1, "high": 2},
    "dropout": {"low": 0.0, "high": 0.3},
}

# inter_cross keeps a separate cross block per ordered pair up to this many modalities.
PAIRWISE_LIMIT = 4


# ----------------------------------------------------------------------------------------------
# shared building blocks


class TokenProjection(nn.Module):
    """Per-modality tokens at a fusion point, projected to ``d_model``.

    ``forward`` returns ``{modality: (tokens [B, N_m, d_model], valid [B, N_m] bool)}`` where
    ``N_m`` sums the token counts of the tensors the point selects and ``valid`` is
    ``token_mask & present``.
    """

    def __init__(self, inputs: dict[str, FeatureShape], point: str, d_model: int) -> None:
        super().__init__()
        self.point = point
        self.proj = nn.ModuleDict(
            {
                m: nn.ModuleList(
                    nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d_model))
                    for _, d in point_shapes(shape, point)
                )
                for m, shape in inputs.items()
            }
        )
        self.n_tokens = {m: sum(n for n, _ in point_shapes(s, point)) for m, s in inputs.items()}

    def forward(
        self, features: dict[str, ModalityFeatures]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for m, projs in self.proj.items():
            f = features[m]
            xs, masks = [], []
            for proj, (x, mask) in zip(projs, select_point(f, self.point), strict=True):
                xs.append(proj(x))  # [B, N_l, d_model]
                masks.append(
                    torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
                    if mask is None
                    else mask.bool()
                )
            valid = torch.cat(masks, dim=1) & f.present.bool().unsqueeze(1)  # [B, N_m]
            out[m] = (torch.cat(xs, dim=1), valid)  # [B, N_m, d_model], [B, N_m]
        return out


def key_padding_mask(valid: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` valid-token mask -> ``key_padding_mask`` (True = ignore) that never masks a
    whole row (rows without any valid key attend to everything; callers discard those rows)."""
    return ~(valid | ~valid.any(dim=1, keepdim=True))


def transformer(d_model: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    """A small pre-norm transformer encoder (batch first, GELU, feed-forward width 2 * d_model)."""
    layer = nn.TransformerEncoderLayer(
        d_model,
        heads,
        dim_feedforward=2 * d_model,
        dropout=dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(
        layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
    )


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention + feed-forward: the ``query`` tokens attend to ``context`` tokens.

    Rows whose context has no valid token get no attention update (only the feed-forward).
    """

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_kv = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, 2 * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(
        self, query: torch.Tensor, context: torch.Tensor, context_valid: torch.Tensor
    ) -> torch.Tensor:
        q, kv = self.norm_q(query), self.norm_kv(context)  # [B, Nq, d], [B, Nk, d]
        a, _ = self.attn(
            q, kv, kv, key_padding_mask=key_padding_mask(context_valid), need_weights=False
        )
        has_context = context_valid.any(dim=1).to(a.dtype)[:, None, None]  # [B, 1, 1]
        x = query + a * has_context  # [B, Nq, d]
        return x + self.ff(self.norm_ff(x))  # [B, Nq, d]


def combine_pooled(pooled: list[torch.Tensor], present: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-modality ``[B, d]`` vectors (zeroed where absent) with presence flags."""
    parts = []
    for v, p in zip(pooled, present, strict=True):
        p = p.to(v.dtype).unsqueeze(-1)  # [B, 1]
        parts += [v * p, p]
    return torch.cat(parts, dim=-1)  # [B, M * (d + 1)]


# ----------------------------------------------------------------------------------------------
# methods


@register_fusion(
    "intra_self",
    family="attention",
    points=ATTENTION_POINTS,
    space=dict(ATTENTION_SPACE),
    description="self-attention inside each modality (a transformer each), pooled, concatenated, MLP",
)
class IntraSelfAttentionFusion(Fusion):
    """Intra-modal self-attention: each modality's tokens go through their own transformer; the
    masked means are concatenated (absent modalities zeroed, plus presence flags) into an MLP."""

    def __init__(
        self,
        inputs: dict[str, FeatureShape],
        out_dim: int,
        point: str = "late",
        d_model: int = 64,
        heads: int = 2,
        layers: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(inputs, out_dim, point)
        self.tokens = TokenProjection(inputs, point, d_model)
        self.encoders = nn.ModuleDict(
            {m: transformer(d_model, heads, layers, dropout) for m in inputs}
        )
        self.head = mlp(len(inputs) * (d_model + 1), d_model, out_dim, 1, dropout)

    def forward(self, features: dict[str, ModalityFeatures]) -> FusionOutput:
        tokens = self.tokens(features)
        pooled = []
        for m in self.modalities:
            x, valid = tokens[m]  # [B, N_m, d], [B, N_m]
            h = self.encoders[m](x, src_key_padding_mask=key_padding_mask(valid))  # [B, N_m, d]
            pooled.append(masked_mean(h, valid))  # [B, d]
        present = [features[m].present for m in self.modalities]
        z = self.head(combine_pooled(pooled, present))  # [B, out_dim]
        return FusionOutput(z=z, aux_loss=self.zero_aux(z))


@register_fusion(
    "inter_cross",
    family="attention",
    points=ATTENTION_POINTS,
    space=dict(ATTENTION_SPACE),
    description=(
        "MulT-style pairwise cross-modal attention (target attends to each source); one "
        f"block per ordered pair up to {PAIRWISE_LIMIT} modalities, above that one block "
        "per target shared across its sources"
    ),
)
class InterCrossAttentionFusion(Fusion):
    """Pairwise cross-modal attention (MulT): for every ordered pair ``source -> target`` the
    target's tokens attend to the source's tokens through ``layers`` cross-attention blocks.

    Per target the results are averaged over the *present* sources, pooled over the target's
    tokens and concatenated across targets into an MLP. M modalities have M * (M - 1) ordered
    pairs; above ``PAIRWISE_LIMIT`` modalities each target keeps one stack of blocks shared by all
    its sources (still applied pair by pair), so the size grows linearly in M.
    """

    def __init__(
        self,
        inputs: dict[str, FeatureShape],
        out_dim: int,
        point: str = "late",
        d_model: int = 64,
        heads: int = 2,
        layers: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(inputs, out_dim, point)
        self.tokens = TokenProjection(inputs, point, d_model)
        self.pairwise = len(inputs) <= PAIRWISE_LIMIT

        def stack() -> nn.ModuleList:
            return nn.ModuleList(
                CrossAttentionBlock(d_model, heads, dropout) for _ in range(layers)
            )

        # keys "<source>-><target>" when pairwise, "<target>" when shared per target
        keys = (
            [f"{s}->{t}" for t in inputs for s in inputs if s != t]
            if self.pairwise
            else list(inputs)
        )
        self.cross = nn.ModuleDict({k: stack() for k in keys})
        self.norm = nn.LayerNorm(d_model)
        self.head = mlp(len(inputs) * (d_model + 1), d_model, out_dim, 1, dropout)

    def forward(self, features: dict[str, ModalityFeatures]) -> FusionOutput:
        tokens = self.tokens(features)
        pooled = []
        for t in self.modalities:
            x_t, valid_t = tokens[t]  # [B, N_t, d]
            acc = torch.zeros_like(x_t)  # [B, N_t, d]
            n_sources = x_t.new_zeros(x_t.shape[0], 1, 1)  # [B, 1, 1]
            for s in self.modalities:
                if s == t:
                    continue
                x_s, valid_s = tokens[s]  # [B, N_s, d]
                h = x_t
                for block in self.cross[f"{s}->{t}" if self.pairwise else t]:
                    h = block(h, x_s, valid_s)  # [B, N_t, d]
                src_present = features[s].present.to(h.dtype)[:, None, None]  # [B, 1, 1]
                acc = acc + h * src_present
                n_sources = n_sources + src_present
            # no present source: the target's own tokens stand in
            h_t = torch.where(n_sources > 0, acc / n_sources.clamp_min(1.0), x_t)  # [B, N_t, d]
            pooled.append(masked_mean(self.norm(h_t), valid_t))  # [B, d]
        present = [features[m].present for m in self.modalities]
        z = self.head(combine_pooled(pooled, present))  # [B, out_dim]
        return FusionOutput(z=z, aux_loss=self.zero_aux(z))


@register_fusion(
    "single_stream",
    family="attention",
    points=ATTENTION_POINTS,
    space=dict(ATTENTION_SPACE),
    description="one transformer over all modalities' tokens + modality embeddings + a CLS token",
)
class SingleStreamFusion(Fusion):
    """Single-stream transformer (VisualBERT / UNITER style): all modalities' tokens, each plus a
    learned modality embedding, concatenated behind a CLS token; padding tokens and absent
    modalities are masked out as keys; ``z`` is read from the CLS token."""

    def __init__(
        self,
        inputs: dict[str, FeatureShape],
        out_dim: int,
        point: str = "late",
        d_model: int = 64,
        heads: int = 2,
        layers: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(inputs, out_dim, point)
        self.tokens = TokenProjection(inputs, point, d_model)
        self.modality_emb = nn.Parameter(torch.randn(len(inputs), d_model) * 0.02)  # [M, d]
        self.cls = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)  # [1, 1, d]
        self.encoder = transformer(d_model, heads, layers, dropout)
        self.head = mlp(d_model, d_model, out_dim, 1, dropout)

    def forward(self, features: dict[str, ModalityFeatures]) -> FusionOutput:
        tokens = self.tokens(features)
        xs, valids = [], []
        for i, m in enumerate(self.modalities):
            x, valid = tokens[m]  # [B, N_m, d], [B, N_m]
            xs.append(x + self.modality_emb[i])
            valids.append(valid)
        x = torch.cat(xs, dim=1)  # [B, N, d], N = sum of N_m
        B = x.shape[0]
        x = torch.cat([self.cls.expand(B, -1, -1), x], dim=1)  # [B, 1 + N, d]
        cls_valid = torch.ones(B, 1, dtype=torch.bool, device=x.device)
        valid = torch.cat([cls_valid] + valids, dim=1)  # [B, 1 + N]; the CLS key is always valid
        h = self.encoder(x, src_key_padding_mask=~valid)  # [B, 1 + N, d]
        z = self.head(h[:, 0])  # [B, out_dim]
        return FusionOutput(z=z, aux_loss=self.zero_aux(z))


@register_fusion(
    "multi_stream",
    family="attention",
    points=ATTENTION_POINTS,
    space=dict(ATTENTION_SPACE),
    description=(
        "a transformer stream per modality + co-attention (each modality attends to the "
        "others' tokens), `layers` rounds; pooled and concatenated"
    ),
)
class MultiStreamFusion(Fusion):
    """Multi-stream transformer with co-attention (ViLBERT style, generalised to M modalities).

    Each round updates every stream with its own self-attention layer, then with a co-attention
    block in which the stream's tokens attend to the concatenated tokens of all other (present)
    modalities. Streams are updated simultaneously from the same round's states. The streams'
    masked means are concatenated (absent modalities zeroed, plus presence flags) into an MLP.
    """

    def __init__(
        self,
        inputs: dict[str, FeatureShape],
        out_dim: int,
        point: str = "late",
        d_model: int = 64,
        heads: int = 2,
        layers: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(inputs, out_dim, point)
        self.tokens = TokenProjection(inputs, point, d_model)
        self.self_attn = nn.ModuleList(
            nn.ModuleDict(
                {
                    m: nn.TransformerEncoderLayer(
                        d_model,
                        heads,
                        dim_feedforward=2 * d_model,
                        dropout=dropout,
                        activation="gelu",
                        batch_first=True,
                        norm_first=True,
                    )
                    for m in inputs
                }
            )
            for _ in range(layers)
        )
        self.co_attn = nn.ModuleList(
            nn.ModuleDict({m: CrossAttentionBlock(d_model, heads, dropout) for m in inputs})
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = mlp(len(inputs) * (d_model + 1), d_model, out_dim, 1, dropout)

    def forward(self, features: dict[str, ModalityFeatures]) -> FusionOutput:
        tokens = self.tokens(features)
        xs = {m: tokens[m][0] for m in self.modalities}  # m -> [B, N_m, d]
        valid = {m: tokens[m][1] for m in self.modalities}  # m -> [B, N_m]
        for self_layers, co_blocks in zip(self.self_attn, self.co_attn, strict=True):
            xs = {
                m: self_layers[m](xs[m], src_key_padding_mask=key_padding_mask(valid[m]))
                for m in self.modalities
            }  # m -> [B, N_m, d]
            new = {}
            for m in self.modalities:
                others = [o for o in self.modalities if o != m]
                if not others:  # one modality (a subset of one): no co-attention partner
                    new[m] = xs[m]
                    continue
                context = torch.cat([xs[o] for o in others], dim=1)  # [B, N_others, d]
                context_valid = torch.cat([valid[o] for o in others], dim=1)  # [B, N_others]
                new[m] = co_blocks[m](xs[m], context, context_valid)  # [B, N_m, d]
            xs = new
        pooled = [masked_mean(self.norm(xs[m]), valid[m]) for m in self.modalities]  # M x [B, d]
        present = [features[m].present for m in self.modalities]
        z = self.head(combine_pooled(pooled, present))  # [B, out_dim]
        return FusionOutput(z=z, aux_loss=self.zero_aux(z))
