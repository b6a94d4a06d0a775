"""Graph family: graph neural networks over modality nodes or over the tokens of all modalities.

Each sample is its own small graph. A batch is kept as dense tensors: node features
``[B, N, d]``, a node mask ``[B, N]`` and an adjacency ``[B, N, N]`` (``adj[b, i, j] = 1``: node
``i`` receives from node ``j``), run through torch_geometric's dense layers (``DenseGCNConv``,
``DenseGATConv``; both add self-loops). The graphs have at most a few dozen nodes, so the dense
form is both the simplest and the fastest way to batch them; masking absent nodes is a product
with the mask.

Absent modalities (and padding tokens) are nodes without any edge: they neither send nor
receive messages, their outputs are zeroed and the readout skips them.

torch_geometric is imported when a graph fusion is built, not when autofuse is imported.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from autofuse.fusion.attention import TokenProjection
from autofuse.fusion.base import Fusion, mlp, pooled_at_point, pooled_dim, register_fusion
from autofuse.types import FeatureShape, FusionOutput, ModalityFeatures

GRAPH_POINTS = ("early", "mid", "late", "hybrid")


def _dense_layers():
    try:
        with warnings.catch_warnings():  # torch_geometric's import-time torch.jit.script use
            warnings.filterwarnings(
                "ignore", message=".*torch.jit.script.*", category=FutureWarning
            )
            # lazy: torch_geometric is slow to import; only graph fusions need it
            from torch_geometric.nn import DenseGATConv, DenseGCNConv
    except ImportError as e:  # pragma: no cover - torch_geometric is a dependency
        raise ImportError(
            "the graph fusion family needs torch_geometric: pip install torch_geometric"
        ) from e
    return DenseGCNConv, DenseGATConv


class GraphLayer(nn.Module):
    """Pre-norm residual graph convolution: ``x + dropout(gelu(conv(norm(x), adj, mask)))``."""

    def __init__(self, d_model: int, conv: str, heads: int, dropout: float) -> None:
        super().__init__()
        DenseGCNConv, DenseGATConv = _dense_layers()
        self.norm = nn.LayerNorm(d_model)
        if conv == "gcn":
            self.conv = DenseGCNConv(d_model, d_model)
        elif conv == "gat":
            self.conv = DenseGATConv(
                d_model, d_model // heads, heads=heads, concat=True, dropout=dropout
            )
        else:
            raise ValueError(f"unknown graph convolution {conv!r} (gcn or gat)")
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, adj: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.norm(x), adj, mask)  # [B, N, d]; zero on masked nodes
        return x + self.dropout(F.gelu(h)) * mask.unsqueeze(-1).to(x.dtype)  # [B, N, d]


class Readout(nn.Module):
    """Graph readout over valid nodes: ``mean`` or ``attention`` (a learned softmax gate)."""

    def __init__(self, d_model: int, kind: str) -> None:
        super().__init__()
        if kind not in ("mean", "attention"):
            raise ValueError(f"unknown readout {kind!r} (mean or attention)")
        self.norm = nn.LayerNorm(d_model)
        self.gate = nn.Linear(d_model, 1) if kind == "attention" else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)  # [B, N, d]
        if self.gate is None:
            scores = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)  # [B, N]
        else:
            scores = self.gate(x).squeeze(-1)  # [B, N]
        scores = scores.masked_fill(~mask, -1e4)
        w = torch.softmax(scores, dim=1) * mask.to(x.dtype)  # [B, N]; rows without nodes -> 0
        return (w.unsqueeze(-1) * x).sum(dim=1)  # [B, d]


def presence_adjacency(mask: torch.Tensor) -> torch.Tensor:
    """Fully connected graph among valid nodes: ``[B, N]`` bool -> ``[B, N, N]`` float."""
    return (mask.unsqueeze(2) & mask.unsqueeze(1)).float()


def knn_adjacency(x: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Each valid node receives from its ``k`` nearest valid nodes (Euclidean, no self-edge).

    ``x [B, N, d]``, ``mask [B, N]`` -> ``adj [B, N, N]`` float; invalid nodes have no edges.
    """
    B, N, _ = x.shape
    k = min(k, N - 1)
    adj = torch.zeros(B, N, N, dtype=x.dtype, device=x.device)
    if k <= 0:
        return adj
    with torch.no_grad():
        dist = torch.cdist(x, x)  # [B, N, N]
        eye = torch.eye(N, dtype=torch.bool, device=x.device)
        dist = dist.masked_fill(
            ~mask.unsqueeze(1) | eye, float("inf")
        )  # no invalid or self sources
        idx = dist.topk(k, dim=-1, largest=False).indices  # [B, N, k]
    adj.scatter_(2, idx, 1.0)
    # fewer than k valid neighbours: the top-k picked invalid ones, drop them; invalid targets too
    return adj * presence_adjacency(mask).to(x.dtype)  # [B, N, N]


def cap_tokens(x: torch.Tensor, valid: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked adaptive average pooling over N down to at most ``cap`` tokens.

    ``x [B, N, d]``, ``valid [B, N]`` -> ``[B, min(N, cap), d]`` and its validity mask (a pooled
    token is the mean of the valid tokens in its window, valid when its window has one).
    """
    if x.shape[1] <= cap:
        return x, valid
    m = valid.to(x.dtype).unsqueeze(1)  # [B, 1, N]
    num = F.adaptive_avg_pool1d(x.transpose(1, 2) * m, cap)  # [B, d, cap]
    den = F.adaptive_avg_pool1d(m, cap)  # [B, 1, cap]
    pooled = (num / den.clamp_min(1e-6)).transpose(1, 2)  # [B, cap, d]
    return pooled, den.squeeze(1) > 0  # [B, cap, d], [B, cap]


@register_fusion(
    "modality_graph",
    family="graph",
    points=GRAPH_POINTS,
    space={
        "d_model": [32, 64, 128],
        "conv": ["gcn", "gat"],
        "heads": [1, 2, 4],
        "layers": {"low": 1, "high": 3},
        "readout": ["mean", "attention"],
        "dropout": {"low": 0.0, "high": 0.3},
    },
    description=(
        "nodes = modality embeddings, fully connected among present modalities; GCN or "
        "GAT layers (torch_geometric), mean or attention readout"
    ),
)
class ModalityGraphFusion(Fusion):
    """A graph per sample whose nodes are the modalities' embeddings at the fusion point.

    Present modalities are fully connected (plus self-loops); absent ones are isolated, zeroed
    and left out of the readout. ``heads`` is used by ``conv="gat"`` only.
    """

    def __init__(
        self,
        inputs: dict[str, FeatureShape],
        out_dim: int,
        point: str = "late",
        d_model: int = 64,
        conv: str = "gcn",
        heads: int = 2,
        layers: int = 2,
        readout: str = "mean",
        dropout: float = 0.1,
    ) -> None:
        super().__init__(inputs, out_dim, point)
        self.proj = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.LayerNorm(pooled_dim(s, point)), nn.Linear(pooled_dim(s, point), d_model)
                )
                for m, s in inputs.items()
            }
        )
        self.layers = nn.ModuleList(
            GraphLayer(d_model, conv, heads, dropout) for _ in range(layers)
        )
        self.readout = Readout(d_model, readout)
        self.head = mlp(d_model + len(inputs), d_model, out_dim, 1, dropout)

    def forward(self, features: dict[str, ModalityFeatures]) -> FusionOutput:
        mask = torch.stack([features[m].present.bool() for m in self.modalities], dim=1)  # [B, M]
        x = torch.stack(
            [self.proj[m](pooled_at_point(features[m], self.point)) for m in self.modalities], dim=1
        )  # [B, M, d]
        x = x * mask.unsqueeze(-1).to(x.dtype)  # absent nodes zeroed
        adj = presence_adjacency(mask).to(x.dtype)  # [B, M, M]
        for layer in self.layers:
            x = layer(x, adj, mask)  # [B, M, d]
        g = self.readout(x, mask)  # [B, d]
        z = self.head(torch.cat([g, mask.to(g.dtype)], dim=-1))  # [B, out_dim]
        return FusionOutput(z=z, aux_loss=self.zero_aux(z))


@register_fusion(
    "token_graph",
    family="graph",
    points=GRAPH_POINTS,
    space={
        "d_model": [32, 64, 128],
        "edges": ["knn", "learned"],
        "k": [4, 8],
        "max_tokens": [4, 8],
        "heads": [1, 2, 4],
        "layers": {"low": 1, "high": 2},
        "readout": ["mean", "attention"],
        "dropout": {"low": 0.0, "high": 0.3},
    },
    description=(
        "nodes = tokens of all modalities (at most max_tokens each, adaptive pooling); "
        "kNN or learned (GAT over the full graph) edges; GAT layers (torch_geometric)"
    ),
)
class TokenGraphFusion(Fusion):
    """A graph per sample whose nodes are the tokens of all modalities.

    Each modality's tokens are projected to ``d_model``, pooled to at most ``max_tokens`` (masked
    adaptive average pooling over N) and tagged with a learned modality embedding. Edges:
    ``knn`` links every valid token to its ``k`` nearest valid tokens in feature space (computed
    on the projected tokens); ``learned`` connects all valid tokens and lets GAT's attention weigh
    the edges. Padding tokens and absent modalities are never neighbours.
    """

    def __init__(
        self,
        inputs: dict[str, FeatureShape],
        out_dim: int,
        point: str = "late",
        d_model: int = 64,
        edges: str = "knn",
        k: int = 4,
        max_tokens: int = 8,
        heads: int = 2,
        layers: int = 2,
        readout: str = "mean",
        dropout: float = 0.1,
    ) -> None:
        super().__init__(inputs, out_dim, point)
        if edges not in ("knn", "learned"):
            raise ValueError(f"unknown edges {edges!r} (knn or learned)")
        self.edges, self.k, self.max_tokens = edges, k, max_tokens
        self.tokens = TokenProjection(inputs, point, d_model)
        self.modality_emb = nn.Parameter(torch.randn(len(inputs), d_model) * 0.02)  # [M, d]
        self.layers = nn.ModuleList(
            GraphLayer(d_model, "gat", heads, dropout) for _ in range(layers)
        )
        self.readout = Readout(d_model, readout)
        self.head = mlp(d_model + len(inputs), d_model, out_dim, 1, dropout)

    def forward(self, features: dict[str, ModalityFeatures]) -> FusionOutput:
        tokens = self.tokens(features)
        xs, valids = [], []
        for i, m in enumerate(self.modalities):
            x, valid = cap_tokens(*tokens[m], self.max_tokens)  # [B, T_m, d], [B, T_m]; T_m <= cap
            xs.append(x + self.modality_emb[i])
            valids.append(valid)
        x = torch.cat(xs, dim=1)  # [B, T, d], T = sum of T_m
        mask = torch.cat(valids, dim=1)  # [B, T]
        x = x * mask.unsqueeze(-1).to(x.dtype)  # padding / absent nodes zeroed
        adj = (
            knn_adjacency(x, mask, self.k)
            if self.edges == "knn"
            else presence_adjacency(mask).to(x.dtype)
        )
        for layer in self.layers:
            x = layer(x, adj, mask)  # [B, T, d]
        g = self.readout(x, mask)  # [B, d]
        present = torch.stack([features[m].present for m in self.modalities], dim=1).to(
            g.dtype
        )  # [B, M]
        z = self.head(torch.cat([g, present], dim=-1))  # [B, out_dim]
        return FusionOutput(z=z, aux_loss=self.zero_aux(z))
