"""GemNet-OC building layers (dense layers, residual layers, scale factors, embeddings, atom update
and output blocks). Parameter names follow JMP's GemNet-OC so state_dicts load key for key.

Conventions of the reference: no dense layer has a bias, the activation is SiLU(x)/0.6
("scaled_silu"), residual layers sum and scale by 1/sqrt(2), a ScaleFactor is the identity while its
stored value is 0 (unfitted) and multiplies otherwise.

Fused paths (on by default; ``fastcsi.backend.override(fused=False)`` runs the plain JMP-shaped
computation, for tests and A/B benchmarks). They compute the same function with fewer passes over the (E, 512) edge tensors and
fewer GEMM flops, exact up to rounding order (tests/model/test_fused.py: float64 outputs and
gradients equal the unfused path to ~1e-12):
  * constant scales (the 1/0.6 of the activation, fitted ScaleFactors, 1/sqrt(2)) are multiplied
    into the next bias-free linear weight (a weight-sized product made on every call: nothing is
    cached, so parameter updates are always seen) or merged into one elementwise pass;
  * an edge embedding Dense([h_s, h_t, m]) is computed as (h W_s)[s] + (h W_t)[t] + m W_m: the atom
    parts are projected once per atom (N rows) instead of once per edge (E rows), and gathered;
  * Dense layers that read the same input are one GEMM over their concatenated weights.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from fastcsi.backend import fused_enabled
from fastcsi.errors import FastCSIError
from fastcsi.model.gemnet_oc.activation import silu


_SKIP_INIT = False

SILU_SCALE = 1.0 / 0.6  # "scaled_silu" = SiLU(x) / 0.6
INV_SQRT_2 = 1.0 / math.sqrt(2.0)


@contextlib.contextmanager
def skip_weight_init():
    """Build modules without the (QR-based, slow) orthogonal initialisation, for weights that are
    about to be overwritten from a checkpoint; the tensors hold arbitrary values until then."""
    global _SKIP_INIT
    previous, _SKIP_INIT = _SKIP_INIT, True
    try:
        yield
    finally:
        _SKIP_INIT = previous


def he_orthogonal_init(tensor: torch.Tensor) -> torch.Tensor:
    """Semi-orthogonal weights, standardised to zero mean / unit variance per output unit and
    scaled by 1/sqrt(fan_in) (He variance with decorrelated columns)."""
    if _SKIP_INIT:
        return tensor
    nn.init.orthogonal_(tensor)
    dims = [0, 1] if tensor.dim() == 3 else [1]
    fan_in = tensor.shape[:-1].numel() if tensor.dim() == 3 else tensor.shape[1]
    with torch.no_grad():
        var, mean = torch.var_mean(tensor, dim=dims, unbiased=True, keepdim=True)
        tensor.copy_((tensor - mean) / (var + 1e-6).sqrt() / math.sqrt(fan_in))
    return tensor


class ScaledSiLU(nn.Module):
    def forward(self, x):
        return silu(x, SILU_SCALE)


def make_activation(name: str | None) -> nn.Module:
    if name is None:
        return nn.Identity()
    key = name.lower()
    if key in ("scaled_silu", "scaled_swish"):
        return ScaledSiLU()
    if key in ("silu", "swish"):
        return nn.SiLU()
    raise FastCSIError(f"GemNet-OC: unknown activation {name!r}; use 'scaled_silu' or 'silu'")


class Dense(nn.Module):
    """Linear (no bias) -> activation -> dropout."""

    def __init__(self, in_features, out_features, bias=False, activation=None, dropout=None):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        he_orthogonal_init(self.linear.weight)
        if self.linear.bias is not None:
            nn.init.zeros_(self.linear.bias)
        self.activation = make_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x):
        y = self.linear(x)
        if isinstance(self.activation, ScaledSiLU) and not torch.is_grad_enabled():
            # inference: activate the fresh GEMM output in place (one 512-wide edge tensor less)
            y = silu(y, SILU_SCALE, inplace=True)
        else:
            y = self.activation(y)
        return self.dropout(y)

    @property
    def scaled_silu(self) -> bool:
        return isinstance(self.activation, ScaledSiLU) and self.linear.bias is None

    def forward_unscaled(self, x, weight_scale: float | torch.Tensor | None = None, out_scale: float = 1.0):
        """Fused path of a scaled-SiLU layer: ``out_scale SiLU(x (s W)^T)`` (dropout applied), i.e.
        the layer's output times 0.6 when ``s`` is None and ``out_scale`` 1; the caller folds the
        1/0.6 into whatever linear map consumes it (or passes it as ``out_scale``)."""
        weight = self.linear.weight if weight_scale is None else self.linear.weight * weight_scale
        y = silu_fresh(torch.nn.functional.linear(x, weight), out_scale)
        return self.dropout(y)

    def forward_linear(self, x, weight_scale: float | torch.Tensor | None = None):
        """Fused path of an activation-free layer with a constant folded into its weight."""
        weight, bias = self.linear.weight, self.linear.bias
        if weight_scale is not None:
            weight = weight * weight_scale
            bias = None if bias is None else bias * weight_scale
        return self.dropout(torch.nn.functional.linear(x, weight, bias))


def silu_fresh(y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale`` * SiLU of a fresh temporary: in place when no gradient is recorded."""
    return silu(y, scale, inplace=not torch.is_grad_enabled())


def scale_value(scale: "ScaleFactor | None"):
    """The multiplier a ScaleFactor applies (1.0 while unfitted), as a 0-d tensor or float."""
    if scale is None or not scale.fitted:
        return 1.0
    return scale.scale_factor


class ResidualLayer(nn.Module):
    """(x + MLP(x)) / sqrt(2) with ``n_layers`` dense layers."""

    def __init__(self, units, n_layers=2, activation=None, dropout=None):
        super().__init__()
        self.dense_mlp = nn.Sequential(
            *[Dense(units, units, activation=activation, dropout=dropout) for _ in range(n_layers)]
        )
        self.foldable = n_layers >= 1 and all(isinstance(d, Dense) and d.scaled_silu for d in self.dense_mlp)

    def forward(self, x):
        if fused_enabled() and self.foldable:
            # each inner 1/0.6 goes into the next weight; the last one joins the residual sum:
            # (x + s/0.6)/sqrt2 = (s + 0.6 x) * (1/(0.6 sqrt2))
            y = x
            for i, dense in enumerate(self.dense_mlp):
                y = dense.forward_unscaled(y, None if i == 0 else SILU_SCALE)
            return y.add_(x, alpha=0.6).mul_(SILU_SCALE * INV_SQRT_2)
        # the MLP output is a fresh tensor that no backward needs: sum and scale it in place
        return self.dense_mlp(x).add_(x).mul_(INV_SQRT_2)


class ScaleFactor(nn.Module):
    """A fitted scalar multiplier; identity while unfitted (stored value 0)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale_factor", torch.tensor(0.0))

    @property
    def fitted(self) -> bool:
        return bool(self.scale_factor.item() != 0.0)

    def forward(self, x, ref=None):  # ref: used by scale fitting only
        """``x`` must be a temporary of the caller (every call site passes a fresh product or
        sum): it is scaled in place, which saves a full pass over an edge tensor."""
        if self.fitted:
            return x.mul_(self.scale_factor)
        return x


class EdgeEmbedding(nn.Module):
    """Dense([h_source, h_target, m]) for every edge."""

    def __init__(self, atom_features, edge_features, out_features, activation=None, dropout=None):
        super().__init__()
        self.dense = Dense(2 * atom_features + edge_features, out_features, activation=activation, dropout=dropout)

    def forward(self, h, m, edge_index):
        if not fused_enabled():
            return self.dense(torch.cat([h[edge_index[0]], h[edge_index[1]], m], dim=-1))
        # Dense([h_s, h_t, m]) = (h W_s)[s] + (h W_t)[t] + m W_m: atom parts projected per atom
        a = h.shape[1]
        w_source, w_target, w_edge = self.dense.linear.weight.split([a, a, m.shape[1]], dim=1)
        per_atom_source, per_atom_target = (h @ torch.cat([w_source, w_target]).T).split(w_source.shape[0], dim=1)
        y = torch.nn.functional.linear(m, w_edge, self.dense.linear.bias)
        y = y.add_(per_atom_source.index_select(0, edge_index[0])).add_(per_atom_target.index_select(0, edge_index[1]))
        if isinstance(self.dense.activation, ScaledSiLU):
            y = silu_fresh(y, SILU_SCALE)
        else:
            y = self.dense.activation(y)
        return self.dense.dropout(y)


def scatter_sum(x: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    out = x.new_zeros((dim_size,) + tuple(x.shape[1:]))
    return out.index_add_(0, index, x)


class AtomUpdateBlock(nn.Module):
    """Sum edge messages (times an rbf projection) onto target atoms, then an MLP."""

    def __init__(self, emb_size_atom, emb_size_edge, emb_size_rbf, n_hidden, activation=None, dropout=None):
        super().__init__()
        self.dense_rbf = Dense(emb_size_rbf, emb_size_edge, activation=None, dropout=dropout)
        self.scale_sum = ScaleFactor()
        self.layers = self.get_mlp(emb_size_edge, emb_size_atom, n_hidden, activation, dropout)

    @staticmethod
    def get_mlp(units_in, units, n_hidden, activation, dropout):
        mlp = [Dense(units_in, units, activation=activation, dropout=dropout)] if units_in != units else []
        mlp += [ResidualLayer(units, 2, activation=activation, dropout=dropout) for _ in range(n_hidden)]
        return nn.ModuleList(mlp)

    def forward(self, h, m, basis_rad, idx_atom):
        x = scatter_sum(m * self.dense_rbf(basis_rad), idx_atom, h.shape[0])
        x = self.scale_sum(x, ref=m)
        for layer in self.layers:
            x = layer(x)
        return x


class OutputBlock(AtomUpdateBlock):
    """Per-block output: atom features x_E (N, emb_size_atom) and, for direct forces, edge features
    x_F (E, emb_size_edge)."""

    def __init__(self, emb_size_atom, emb_size_edge, emb_size_rbf, n_hidden, n_hidden_afteratom,
                 activation=None, direct_forces=True, edge_dropout=None, dropout=None):
        super().__init__(emb_size_atom, emb_size_edge, emb_size_rbf, n_hidden, activation, dropout)
        self.direct_forces = direct_forces
        self.edge_dropout = edge_dropout
        self.seq_energy_pre = self.layers  # same modules, JMP registers both names
        self.seq_energy2 = (
            self.get_mlp(emb_size_atom, emb_size_atom, n_hidden_afteratom, activation, dropout)
            if n_hidden_afteratom >= 1 else None
        )
        if direct_forces:
            self.scale_rbf_F = ScaleFactor()
            self.seq_forces = self.get_mlp(emb_size_edge, emb_size_edge, n_hidden, activation, dropout)
            self.dense_rbf_F = Dense(emb_size_rbf, emb_size_edge, activation=None, dropout=dropout)

    def forward_energy(self, h, m, basis_rad, idx_atom):
        x_E = scatter_sum(m * self.dense_rbf(basis_rad), idx_atom, h.shape[0])
        if self.training and self.edge_dropout:
            x_E = x_E / (1 - self.edge_dropout)
        x_E = self.scale_sum(x_E, ref=m)
        for layer in self.seq_energy_pre:
            x_E = layer(x_E)
        if self.seq_energy2 is not None:
            x_E = (x_E + h) * (1.0 / math.sqrt(2.0))
            for layer in self.seq_energy2:
                x_E = layer(x_E)
        return x_E

    def forward_forces(self, m, basis_rad):
        if not self.direct_forces:
            return None
        x_F = m
        for layer in self.seq_forces:
            x_F = layer(x_F)
        if fused_enabled():  # the scale factor folded into dense_rbf_F's weight
            return x_F * self.dense_rbf_F.forward_linear(basis_rad, scale_value(self.scale_rbf_F))
        return self.scale_rbf_F(x_F * self.dense_rbf_F(basis_rad), ref=x_F)

    def forward(self, h, m, basis_rad, idx_atom):
        return self.forward_energy(h, m, basis_rad, idx_atom), self.forward_forces(m, basis_rad)


class FinalMLP(nn.Module):
    """Dense over the concatenated per-block outputs, then residual layers."""

    def __init__(self, emb_size, num_blocks, num_global_out_layers, activation=None, dropout=None):
        super().__init__()
        layers = [Dense(emb_size * (num_blocks + 1), emb_size, activation=activation, dropout=dropout)]
        layers += [ResidualLayer(emb_size, activation=activation, dropout=dropout) for _ in range(num_global_out_layers)]
        self.out_mlp = nn.Sequential(*layers)

    def forward(self, x):
        return self.out_mlp(x)


def head_mlp(dims: list[int], activation: str, bias: bool) -> nn.Sequential:
    """JMP's fine-tuning head: Linear layers with the activation between them; the last layer has no
    bias when it outputs one value (layout: 0=Linear, 1=act, 2=Linear, ...)."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        use_bias = bias and not dims[i + 1] == 1
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=use_bias))
        if i < len(dims) - 2:
            layers.append(make_activation(activation))
    return nn.Sequential(*layers)
