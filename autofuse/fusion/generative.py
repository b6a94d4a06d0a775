"""Generative family: a joint latent learnt by reconstructing / translating the modalities.

Both methods add an auxiliary loss (the trainer adds ``aux_weight * aux_loss`` to the task loss).
Reconstruction targets are the (detached) features read at the fusion point, standardised per
feature with running statistics of the present rows, so the losses are O(1) whatever the encoders'
scale (predicting the running mean scores about 1).
"""

from __future__ import annotations

import torch
from torch import nn

from autofuse.fusion.base import (
    Fusion,
    full_precision,
    mlp,
    pooled_at_point,
    pooled_dim,
    register_fusion,
    upcast,
)
from autofuse.types import FeatureShape, FusionOutput, ModalityFeatures

ALL_POINTS = ("early", "mid", "late", "hybrid")


class RunningStandardizer(nn.Module):
    """Per-feature running mean / variance over the *present* rows; ``(x - mean) / std``.

    The first updates average cumulatively (momentum ``1 / (count + 1)``), then it is an EMA with
    ``momentum``. Batches with fewer than two present rows leave the statistics alone. All updates
    are tensor ops (no host sync).
    """

    def __init__(self, dim: int, momentum: float = 0.01, min_var: float = 1e-3) -> None:
        super().__init__()
        self.momentum = momentum
        self.min_var = min_var
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, x: torch.Tensor, present: torch.Tensor) -> None:
        x = x.to(self.mean.dtype)
        p = present.to(x.dtype).unsqueeze(-1)  # [B, 1]
        n = p.sum()
        w = p / n.clamp_min(1.0)  # [B, 1]; weights of the present rows
        mean_b = (x * w).sum(dim=0)  # [D]
        var_b = ((x - mean_b).pow(2) * w).sum(dim=0)  # [D]
        step = torch.clamp(1.0 / (self.count.to(x.dtype) + 1.0), min=self.momentum)
        step = step * (n >= 2).to(x.dtype)  # no update from 0 or 1 rows
        self.mean.lerp_(mean_b, step)
        self.var.lerp_(var_b, step)
        self.count += (n >= 2).long()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.var.clamp_min(self.min_var).sqrt()

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.var.clamp_min(self.min_var).sqrt() + self.mean


def masked_mse(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over valid rows of the per-row MSE, and the number of valid rows: ``([], [])``."""
    err = (pred - target).pow(2).mean(dim=-1)  # [B]
    v = valid.to(err.dtype)
    return (err * v).sum(), v.sum()


@register_fusion(
    "mvae",
    family="generative",
    points=ALL_POINTS,
    space={
        "latent": [16, 32, 64],
        "hidden": [64, 128],
        "beta": {"low": 1e-3, "high": 1.0, "log": True},
        "subsample": [True, False],
        "z_input": ["sample", "sample_and_mean"],
        "dropout": {"low": 0.0, "high": 0.3},
    },
    description="multimodal VAE: product-of-experts joint latent of the present modalities, "
    "reconstruction + KL auxiliary loss; imputes absent modalities",
)
class MVAEFusion(Fusion):
    """Multimodal VAE (Wu & Goodman 2018) over the feature vectors read at the fusion point.

    Each modality's encoder gives a Gaussian expert ``(mu_m, logvar_m)`` over a shared latent. The
    joint posterior is the product of the experts of the modalities present in that row and of a
    prior expert N(0, I): an absent modality is imputed by decoding the latent inferred from the
    others. Decoders reconstruct every present modality's (detached, standardised) features.

    ``aux_loss`` = mean reconstruction MSE over the present (row, modality) pairs
    + ``beta`` * KL(q || N(0, I)) averaged over latent dimensions and rows. With ``subsample`` the
    training step adds the same ELBO for a random non-empty subset of each row's present modalities
    (the MVAE sub-sampled objective), which is what teaches cross-modal imputation; the two ELBOs
    are averaged. ``z`` = a linear map of the latent (a sample in training, the mean in eval), or
    of the latent and the posterior mean with ``z_input="sample_and_mean"``. Under mixed
    precision the product of experts and the KL term run in float32.
    """

    def __init__(
        self,
        inputs: dict[str, FeatureShape],
        out_dim: int,
        point: str = "late",
        latent: int = 32,
        hidden: int = 128,
        beta: float = 0.1,
        subsample: bool = True,
        z_input: str = "sample",
        dropout: float = 0.1,
    ) -> None:
        super().__init__(inputs, out_dim, point)
        if z_input not in ("sample", "sample_and_mean"):
            raise ValueError(f"z_input must be 'sample' or 'sample_and_mean', got {z_input!r}")
        self.latent, self.beta, self.subsample, self.z_input = latent, beta, subsample, z_input
        dims = {m: pooled_dim(s, point) for m, s in inputs.items()}
        self.norms = nn.ModuleDict({m: nn.LayerNorm(d) for m, d in dims.items()})
        self.encoders = nn.ModuleDict(
            {m: mlp(d, hidden, 2 * latent, 1, dropout) for m, d in dims.items()}
        )
        self.decoders = nn.ModuleDict(
            {m: mlp(latent, hidden, d, 1, dropout) for m, d in dims.items()}
        )
        self.stats = nn.ModuleDict({m: RunningStandardizer(d) for m, d in dims.items()})
        self.proj = nn.Linear(latent * (2 if z_input == "sample_and_mean" else 1), out_dim)

    # ---- pieces ---------------------------------------------------------------------------------

    def _read(
        self, features: dict[str, ModalityFeatures]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        xs = {m: pooled_at_point(features[m], self.point) for m in self.modalities}  # {m: [B, D_m]}
        present = torch.stack([features[m].present for m in self.modalities], dim=1)  # [B, M] bool
        return xs, present

    def _experts(self, xs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.stack(
            [self.encoders[m](self.norms[m](xs[m])) for m in self.modalities], dim=1
        )  # [B, M, 2L]
        mu, logvar = out.chunk(2, dim=-1)  # [B, M, L] each
        return mu, logvar.clamp(-6.0, 6.0)

    @staticmethod
    def product_of_experts(
        mu: torch.Tensor, logvar: torch.Tensor, use: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint Gaussian of the prior N(0, I) and the experts where ``use`` [B, M] is True.

        precision T = 1 + sum_m T_m, mean = sum_m T_m mu_m / T. A row with no expert gets the prior.
        Float32 (also under mixed precision).
        """
        with full_precision(mu):
            mu, logvar = upcast(mu), upcast(logvar)
            prec = torch.exp(-logvar) * use.unsqueeze(-1).to(mu.dtype)  # [B, M, L]; 0 if unused
            total = 1.0 + prec.sum(dim=1)  # [B, L]; the 1 is the prior expert
            mu_j = (prec * mu).sum(dim=1) / total  # [B, L]
            return mu_j, -torch.log(total)  # mean, logvar

    def _elbo(
        self,
        mu_j: torch.Tensor,
        logvar_j: torch.Tensor,
        xs: dict[str, torch.Tensor],
        present: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction + beta * KL for one posterior; returns (loss, latent used)."""
        if self.training:
            lat = mu_j + torch.randn_like(mu_j) * torch.exp(
                0.5 * logvar_j
            )  # [B, L] reparameterised
        else:
            lat = mu_j
        total, count = lat.new_zeros(()), lat.new_zeros(())
        for i, m in enumerate(self.modalities):
            target = self.stats[m](xs[m].detach())  # [B, D_m] standardised
            s, c = masked_mse(self.decoders[m](lat), target, present[:, i])
            total, count = total + s, count + c
        recon = total / count.clamp_min(1.0)
        with full_precision(mu_j):  # per latent dim, in float32
            mu_f, logvar_f = upcast(mu_j), upcast(logvar_j)
            kl = 0.5 * (mu_f.pow(2) + logvar_f.exp() - 1.0 - logvar_f).mean(dim=-1).mean()
        return recon + self.beta * kl, lat

    @staticmethod
    def _random_subset(present: torch.Tensor) -> torch.Tensor:
        """Each present modality kept with p=0.5; a row left empty keeps one random present one."""
        r = torch.rand(present.shape, device=present.device)  # [B, M]
        keep = present & (r < 0.5)
        one = torch.nn.functional.one_hot(
            r.masked_fill(~present, -1.0).argmax(dim=1), present.shape[1]
        ).bool()
        return keep | (one & present & ~keep.any(dim=1, keepdim=True))

    # ---- forward / impute -----------------------------------------------------------------------

    def forward(self, features: dict[str, ModalityFeatures]) -> FusionOutput:
        xs, present = self._read(features)  # {m: [B, D_m]}, [B, M]
        if self.training:
            for i, m in enumerate(self.modalities):
                self.stats[m].update(xs[m].detach(), present[:, i])
        mu, logvar = self._experts(xs)  # [B, M, L] each
        mu_j, logvar_j = self.product_of_experts(mu, logvar, present)  # [B, L] each
        aux, lat = self._elbo(mu_j, logvar_j, xs, present)  # [], [B, L]
        if self.training and self.subsample:
            mu_s, logvar_s = self.product_of_experts(mu, logvar, self._random_subset(present))
            aux_s, _ = self._elbo(mu_s, logvar_s, xs, present)  # reconstruct all from the subset
            aux = 0.5 * (aux + aux_s)
        h = lat if self.z_input == "sample" else torch.cat([lat, mu_j], dim=-1)  # [B, L or 2L]
        z = self.proj(h)  # [B, out_dim]
        return FusionOutput(z=z, aux_loss=aux)

    @torch.no_grad()
    def impute(self, features: dict[str, ModalityFeatures]) -> dict[str, torch.Tensor]:
        """Fill in absent modalities from the joint latent (posterior mean) of the present ones.

        Returns, for every modality absent in at least one row, a ``[B, D_m]`` tensor of its
        features at the fusion point (``pooled_at_point`` width): the reconstruction on absent
        rows, the true features on present rows. Runs in eval mode (no dropout, no sampling).
        """
        was_training = self.training
        self.eval()
        try:
            xs, present = self._read(features)
            mu, logvar = self._experts(xs)
            mu_j, _ = self.product_of_experts(mu, logvar, present)  # [B, L]
            out = {}
            for i, m in enumerate(self.modalities):
                p = present[:, i]
                if bool(p.all()):
                    continue
                rec = self.stats[m].inverse(self.decoders[m](mu_j))  # [B, D_m]
                out[m] = torch.where(p.unsqueeze(-1), xs[m], rec.to(xs[m].dtype))
            return out
        finally:
            self.train(was_training)


@register_fusion(
    "translation",
    family="generative",
    points=ALL_POINTS,
    space={
        "source": {"low": 0, "high": 5},
        "bottleneck": [16, 32, 64],
        "hidden": [64, 128],
        "cycle": [False, True],
        "dropout": {"low": 0.0, "high": 0.3},
    },
    description="MCTN-style: translate a source modality into the others through a bottleneck "
    "that is used for prediction (optional cyclic back-translation)",
)
class TranslationFusion(Fusion):
    """Multimodal cyclic translation (Pham et al. 2019), on feature vectors.

    The source is ``sorted(modalities)[source]`` (``source`` clamped to the valid range). Its
    features are encoded into a bottleneck from which one decoder per other modality predicts that
    modality's (detached, standardised) features. ``aux_loss`` = translation MSE over the
    (row, target) pairs where both the source and the target are present; with ``cycle`` a
    back-translator maps the predicted targets back to the source features and its MSE is added.
    ``z`` = a linear map of the bottleneck. Rows without the source get a zero bottleneck, so
    their ``z`` is the bias (finite) -- like MCTN, prediction uses the source only.
    """

    def __init__(
        self,
        inputs: dict[str, FeatureShape],
        out_dim: int,
        point: str = "late",
        source: int = 0,
        bottleneck: int = 32,
        hidden: int = 128,
        cycle: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(inputs, out_dim, point)
        order = sorted(self.modalities)
        self.source = order[min(max(int(source), 0), len(order) - 1)]
        self.targets = [m for m in order if m != self.source]
        dims = {m: pooled_dim(s, point) for m, s in inputs.items()}
        d_src = dims[self.source]
        self.norm = nn.LayerNorm(d_src)
        self.encoder = mlp(d_src, hidden, bottleneck, 1, dropout)
        self.decoders = nn.ModuleDict(
            {t: mlp(bottleneck, hidden, dims[t], 1, dropout) for t in self.targets}
        )
        self.cycle = bool(cycle) and bool(self.targets)
        used = self.targets + ([self.source] if self.cycle else [])
        self.stats = nn.ModuleDict({m: RunningStandardizer(dims[m]) for m in used})
        self.back = (
            mlp(sum(dims[t] for t in self.targets), hidden, d_src, 1, dropout)
            if self.cycle
            else None
        )
        self.proj = nn.Linear(bottleneck, out_dim)

    def forward(self, features: dict[str, ModalityFeatures]) -> FusionOutput:
        xs = {m: pooled_at_point(features[m], self.point) for m in self.modalities}  # {m: [B, D_m]}
        has_src = features[self.source].present  # [B] bool
        if self.training:
            for m in self.stats:
                self.stats[m].update(xs[m].detach(), features[m].present)
        x_src = self.norm(xs[self.source])  # [B, D_s]
        h = self.encoder(x_src) * has_src.unsqueeze(-1).to(
            x_src.dtype
        )  # [B, bottleneck]; 0 without source
        z = self.proj(h)  # [B, out_dim]

        total, count = z.new_zeros(()), z.new_zeros(())
        preds = []
        for t in self.targets:
            pred = self.decoders[t](h)  # [B, D_t] (standardised space)
            s, c = masked_mse(pred, self.stats[t](xs[t].detach()), has_src & features[t].present)
            total, count = total + s, count + c
            preds.append(pred)
        aux = total / count.clamp_min(1.0)
        if self.cycle:
            back = self.back(torch.cat(preds, dim=-1))  # [B, D_s]: source -> targets -> source
            s, c = masked_mse(back, self.stats[self.source](xs[self.source].detach()), has_src)
            aux = aux + s / c.clamp_min(1.0)
        return FusionOutput(z=z, aux_loss=aux)
