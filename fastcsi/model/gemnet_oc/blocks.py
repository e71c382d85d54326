"""GemNet-OC interaction blocks: edge-to-edge triplet, quadruplet, atom-to-edge, edge-to-atom and
atom-to-atom message passing, merged and followed by residual/atom-update layers (JMP layout)."""
from __future__ import annotations

import math

import torch
from torch import nn

from fastcsi.backend import fused_enabled
from fastcsi.model.gemnet_oc.interaction import choose_backend, interaction_bilinear
from fastcsi.model.gemnet_oc.interaction_cpu import gather_padded, interaction_bilinear_precontracted, padded_source
from fastcsi.model.gemnet_oc.layers import (
    SILU_SCALE, AtomUpdateBlock, Dense, EdgeEmbedding, ResidualLayer, ScaleFactor, scale_value, silu_fresh,
)

INV_SQRT_2 = 1.0 / math.sqrt(2.0)


def _linear_only(dense: Dense) -> bool:
    return isinstance(dense.activation, nn.Identity)


def _symmetric_up(up_ca: Dense, up_ac: Dense, x, id_swap, weight_scale):
    """Fused (up_ca(x) + up_ac(x)[id_swap]) / sqrt(2): one GEMM over both weights, ``weight_scale``
    (the scales of ``x``) folded into them, the activation's 1/0.6 merged with the 1/sqrt(2)."""
    weight = torch.cat([up_ca.linear.weight, up_ac.linear.weight]) * weight_scale
    y = silu_fresh(torch.nn.functional.linear(x, weight))
    # split (not slicing): its backward assembles the two gradients with one cat
    x_ca, x_ac = y.split([up_ca.linear.weight.shape[0], up_ac.linear.weight.shape[0]], dim=1)
    x_ca, x_ac = up_ca.dropout(x_ca), up_ac.dropout(x_ac)
    return torch.add(x_ca, x_ac.index_select(0, id_swap)).mul_(SILU_SCALE * INV_SQRT_2)


class EfficientInteractionBilinear(nn.Module):
    """Holds the bilinear weight (``bilinear.linear.weight``); the math lives in interaction.py. The
    backend is the op's ("auto" unless ``fastcsi.backend.override(interaction=...)`` says otherwise)."""

    def __init__(self, emb_size_in, emb_size_interm, emb_size_out, dropout=None):
        super().__init__()
        self.bilinear = Dense(emb_size_in * emb_size_interm, emb_size_out, activation=None, dropout=dropout)

    def forward(self, basis, x, gather_idx, out_idx, out_inner, agg2_outer=None, agg2_inner=None, agg2_size=None,
                precontracted=None):
        """``precontracted``: ``rad_W1 @ sph`` of ``basis`` when the caller has it; used where the op
        runs its "cpu" backend (see ``interaction_bilinear_precontracted``)."""
        if precontracted is not None and agg2_outer is None and choose_backend(x) == "cpu":
            out = interaction_bilinear_precontracted(precontracted, x, gather_idx, out_idx, out_inner,
                                                     self.bilinear.linear.weight)
            return self.bilinear.dropout(out)
        rad_W1, sph = basis
        out = interaction_bilinear(rad_W1, sph, x, gather_idx, out_idx, out_inner, self.bilinear.linear.weight,
                                   agg2_outer, agg2_inner, agg2_size)
        return self.bilinear.dropout(out)


class TripletInteraction(nn.Module):
    def __init__(self, emb_size_in, emb_size_out, emb_size_trip_in, emb_size_trip_out, emb_size_rbf, emb_size_cbf,
                 symmetric_mp=True, swap_output=True, activation=None, dropout=None):
        super().__init__()
        self.symmetric_mp, self.swap_output = symmetric_mp, swap_output
        self.dense_ba = Dense(emb_size_in, emb_size_in, activation=activation, dropout=dropout)
        self.mlp_rbf = Dense(emb_size_rbf, emb_size_in, activation=None, dropout=dropout)
        self.scale_rbf = ScaleFactor()
        self.mlp_cbf = EfficientInteractionBilinear(emb_size_trip_in, emb_size_cbf, emb_size_trip_out, dropout)
        self.scale_cbf_sum = ScaleFactor()
        self.down_projection = Dense(emb_size_in, emb_size_trip_in, activation=activation, dropout=dropout)
        self.up_projection_ca = Dense(emb_size_trip_out, emb_size_out, activation=activation, dropout=dropout)
        if symmetric_mp:
            self.up_projection_ac = Dense(emb_size_trip_out, emb_size_out, activation=activation, dropout=dropout)
        self.foldable = (all(d.scaled_silu for d in (self.dense_ba, self.down_projection, self.up_projection_ca))
                         and (not symmetric_mp or self.up_projection_ac.scaled_silu) and _linear_only(self.mlp_rbf))

    def forward(self, m, bases, idx, id_swap, expand_idx=None, agg2_outer=None, agg2_inner=None, agg2_size=None,
                pre=None):
        """``pre`` (fused path only): SiLU(dense_ba(m)) without its 1/0.6, when the caller computed
        it together with other projections of ``m``."""
        if fused_enabled() and self.foldable:
            return self._forward_fused(m, bases, idx, id_swap, expand_idx, agg2_outer, agg2_inner, agg2_size, pre)
        x_ba = self.dense_ba(m)
        if expand_idx is not None:
            x_ba = x_ba[expand_idx]
        x_ba = self.scale_rbf(x_ba * self.mlp_rbf(bases["rad"]), ref=x_ba)
        x_ba = self.down_projection(x_ba)
        x = self.mlp_cbf(bases["cir"], x_ba, idx["in"], idx["out"], idx["out_agg"], agg2_outer, agg2_inner, agg2_size)
        x = self.scale_cbf_sum(x, ref=x_ba)
        if self.symmetric_mp:
            x_ca = self.up_projection_ca(x)
            x_ac = self.up_projection_ac(x)[id_swap]  # add to a->c, not c->a
            return x_ca.add_(x_ac).mul_(INV_SQRT_2)  # x_ca: a fresh Dense output
        if self.swap_output:
            x = x[id_swap]
        return self.up_projection_ca(x)

    def _forward_fused(self, m, bases, idx, id_swap, expand_idx, agg2_outer, agg2_inner, agg2_size, pre):
        x_ba = self.dense_ba.forward_unscaled(m) if pre is None else pre
        if expand_idx is not None:
            x_ba = x_ba.index_select(0, expand_idx)
        # dense_ba's 1/0.6 and scale_rbf go into mlp_rbf's weight
        x_ba = x_ba * self.mlp_rbf.forward_linear(bases["rad"], SILU_SCALE * scale_value(self.scale_rbf))
        x_ba = self.down_projection.forward_unscaled(x_ba)
        x = self.mlp_cbf(bases["cir"], x_ba, idx["in"], idx["out"], idx["out_agg"], agg2_outer, agg2_inner, agg2_size,
                         precontracted=bases.get("cir_pre"))
        # the bilinear op is linear in x_ba: down_projection's 1/0.6 and scale_cbf_sum go into the up projection
        up_scale = SILU_SCALE * scale_value(self.scale_cbf_sum)
        if self.symmetric_mp:
            return _symmetric_up(self.up_projection_ca, self.up_projection_ac, x, id_swap, up_scale)
        if self.swap_output:
            x = x.index_select(0, id_swap)
        return self.up_projection_ca.forward_unscaled(x, up_scale, SILU_SCALE)


class QuadrupletInteraction(nn.Module):
    def __init__(self, emb_size_edge, emb_size_quad_in, emb_size_quad_out, emb_size_rbf, emb_size_cbf, emb_size_sbf,
                 symmetric_mp=True, activation=None, dropout=None):
        super().__init__()
        self.symmetric_mp = symmetric_mp
        self.dense_db = Dense(emb_size_edge, emb_size_edge, activation=activation, dropout=dropout)
        self.mlp_rbf = Dense(emb_size_rbf, emb_size_edge, activation=None, dropout=dropout)
        self.scale_rbf = ScaleFactor()
        self.mlp_cbf = Dense(emb_size_cbf, emb_size_quad_in, activation=None, dropout=dropout)
        self.scale_cbf = ScaleFactor()
        self.mlp_sbf = EfficientInteractionBilinear(emb_size_quad_in, emb_size_sbf, emb_size_quad_out, dropout)
        self.scale_sbf_sum = ScaleFactor()
        self.down_projection = Dense(emb_size_edge, emb_size_quad_in, activation=activation, dropout=dropout)
        self.up_projection_ca = Dense(emb_size_quad_out, emb_size_edge, activation=activation, dropout=dropout)
        if symmetric_mp:
            self.up_projection_ac = Dense(emb_size_quad_out, emb_size_edge, activation=activation, dropout=dropout)
        self.foldable = (all(d.scaled_silu for d in (self.dense_db, self.down_projection, self.up_projection_ca))
                         and (not symmetric_mp or self.up_projection_ac.scaled_silu)
                         and _linear_only(self.mlp_rbf) and _linear_only(self.mlp_cbf))

    def forward(self, m, bases, idx, id_swap, pre=None):
        if fused_enabled() and self.foldable:
            return self._forward_fused(m, bases, idx, id_swap, pre)
        x_db = self.dense_db(m)
        x_db = self.scale_rbf(x_db * self.mlp_rbf(bases["rad"]), ref=x_db)
        x_db = self.down_projection(x_db)
        x_db = x_db[idx["triplet_in"]["in"]]
        x_db = self.scale_cbf(x_db * self.mlp_cbf(bases["cir"]), ref=x_db)
        x = self.mlp_sbf(bases["sph"], x_db, idx["trip_in_to_quad"], idx["out"], idx["out_agg"])
        x = self.scale_sbf_sum(x, ref=x_db)
        if self.symmetric_mp:
            x_ca = self.up_projection_ca(x)
            x_ac = self.up_projection_ac(x)[id_swap]
            return x_ca.add_(x_ac).mul_(INV_SQRT_2)
        return self.up_projection_ca(x)

    def _forward_fused(self, m, bases, idx, id_swap, pre):
        x_db = self.dense_db.forward_unscaled(m) if pre is None else pre
        x_db = x_db * self.mlp_rbf.forward_linear(bases["rad"], SILU_SCALE * scale_value(self.scale_rbf))
        x_db = self.down_projection.forward_unscaled(x_db).index_select(0, idx["triplet_in"]["in"])
        x_db = x_db * self.mlp_cbf.forward_linear(bases["cir"], SILU_SCALE * scale_value(self.scale_cbf))
        x = self.mlp_sbf(bases["sph"], x_db, idx["trip_in_to_quad"], idx["out"], idx["out_agg"],
                         precontracted=bases.get("sph_pre"))
        up_scale = scale_value(self.scale_sbf_sum)
        if self.symmetric_mp:
            return _symmetric_up(self.up_projection_ca, self.up_projection_ac, x, id_swap, up_scale)
        return self.up_projection_ca.forward_unscaled(x, up_scale, SILU_SCALE)


class PairInteraction(nn.Module):
    def __init__(self, emb_size_atom, emb_size_pair_in, emb_size_pair_out, emb_size_rbf, activation=None, dropout=None):
        super().__init__()
        self.bilinear = Dense(emb_size_rbf * emb_size_pair_in, emb_size_pair_out, activation=None, dropout=dropout)
        self.scale_rbf_sum = ScaleFactor()
        self.down_projection = Dense(emb_size_atom, emb_size_pair_in, activation=activation, dropout=dropout)
        self.up_projection = Dense(emb_size_pair_out, emb_size_atom, activation=activation, dropout=dropout)

    def forward(self, h, rad_basis, edge_index, target_neighbor_idx):
        num_atoms = h.shape[0]
        kmax = int(target_neighbor_idx.max()) + 1 if target_neighbor_idx.numel() else 0
        # padded[target, rank] = down(h)[source], as one gather
        src = padded_source(edge_index[1], target_neighbor_idx, num_atoms, kmax, num_atoms, gather_idx=edge_index[0])
        padded = gather_padded(self.down_projection(h), src, num_atoms, kmax)
        contracted = rad_basis @ padded  # (N, emb_rbf, emb_in)
        h_out = self.bilinear(contracted.reshape(num_atoms, contracted.shape[1] * contracted.shape[2]))
        h_out = self.scale_rbf_sum(h_out)
        return self.up_projection(h_out)


class InteractionBlock(nn.Module):
    def __init__(self, hp: dict):
        super().__init__()
        act, drop = hp["activation"], hp.get("dropout")
        ea, ee = hp["emb_size_atom"], hp["emb_size_edge"]
        er, ec, es = hp["emb_size_rbf"], hp["emb_size_cbf"], hp["emb_size_sbf"]
        ti, to = hp["emb_size_trip_in"], hp["emb_size_trip_out"]
        self.dense_ca = Dense(ee, ee, activation=act, dropout=drop)
        self.trip_interaction = TripletInteraction(ee, ee, ti, to, er, ec, True, True, act, drop)
        self.quad_interaction = (
            QuadrupletInteraction(ee, hp["emb_size_quad_in"], hp["emb_size_quad_out"], er, ec, es, True, act, drop)
            if hp["quad_interaction"] else None
        )
        self.atom_edge_interaction = (
            TripletInteraction(ea, ee, ti, to, er, ec, True, True, act, drop) if hp["atom_edge_interaction"] else None
        )
        self.edge_atom_interaction = (
            TripletInteraction(ee, ea, ti, to, er, ec, False, False, act, drop) if hp["edge_atom_interaction"] else None
        )
        self.atom_interaction = (
            PairInteraction(ea, hp["emb_size_aint_in"], hp["emb_size_aint_out"], er, act, drop)
            if hp["atom_interaction"] else None
        )
        self.layers_before_skip = nn.ModuleList(
            [ResidualLayer(ee, activation=act, dropout=drop) for _ in range(hp["num_before_skip"])])
        self.layers_after_skip = nn.ModuleList(
            [ResidualLayer(ee, activation=act, dropout=drop) for _ in range(hp["num_after_skip"])])
        self.atom_emb_layers = nn.ModuleList(
            [ResidualLayer(ea, activation=act, dropout=drop) for _ in range(hp["num_atom_emb_layers"])])
        self.atom_update = AtomUpdateBlock(ea, ee, er, hp["num_atom"], act, drop)
        self.concat_layer = EdgeEmbedding(ea, ee, ee, activation=act, dropout=drop)
        self.residual_m = nn.ModuleList([ResidualLayer(ee, activation=act, dropout=drop) for _ in range(hp["num_concat"])])
        self.inv_sqrt_num_eint = 1 / math.sqrt(2.0 + hp["quad_interaction"] + hp["atom_edge_interaction"])
        self.inv_sqrt_num_aint = 1 / math.sqrt(1.0 + hp["edge_atom_interaction"] + hp["atom_interaction"])
        # the Dense layers that read m, merged into one GEMM on the fused path
        self._m_readers = [self.dense_ca, self.trip_interaction.dense_ba]
        self._m_readers += [self.quad_interaction.dense_db] if self.quad_interaction is not None else []
        self._m_readers += [self.edge_atom_interaction.dense_ba] if self.edge_atom_interaction is not None else []
        self.merge_m_readers = (
            all(d.scaled_silu for d in self._m_readers)
            and all(i.foldable for i in (self.trip_interaction, self.quad_interaction, self.edge_atom_interaction)
                    if i is not None)
        )

    def _read_m(self, m):
        """SiLU(m W^T) of every m-reading Dense in one GEMM (without the 1/0.6), per reader."""
        weight = torch.cat([d.linear.weight for d in self._m_readers])
        y = silu_fresh(torch.nn.functional.linear(m, weight))
        # split (not slicing): its backward assembles the gradients with one cat
        parts = y.split([d.linear.weight.shape[0] for d in self._m_readers], dim=1)
        return [dense.dropout(part) for dense, part in zip(self._m_readers, parts)]

    def forward(self, h, m, bases, g):
        main, a2ee2a, a2a, id_swap = g["main"], g["a2ee2a"], g["a2a"], g["id_swap"]
        num_atoms = h.shape[0]
        pre = {}
        if fused_enabled() and self.merge_m_readers:
            parts = self._read_m(m)
            # out of place: the other parts are views of the same tensor that backward may need
            x = parts[0] * SILU_SCALE
            pre = dict(zip(("trip", "quad"), parts[1:3] if self.quad_interaction is not None else parts[1:2]))
            if self.edge_atom_interaction is not None:
                pre["e2a"] = parts[-1]
            x.add_(self.trip_interaction(m, bases["e2e"], g["trip_e2e"], id_swap, pre=pre["trip"]))
        else:
            # sums of fresh edge tensors are accumulated in place (no backward needs the operands)
            x = self.dense_ca(m).add_(self.trip_interaction(m, bases["e2e"], g["trip_e2e"], id_swap))
        if self.quad_interaction is not None:
            x.add_(self.quad_interaction(m, bases["qint"], g["quad"], id_swap, pre=pre.get("quad")))
        if self.atom_edge_interaction is not None:
            x.add_(self.atom_edge_interaction(h, bases["a2e"], g["trip_a2e"], id_swap, expand_idx=a2ee2a["edge_index"][0]))
        x.mul_(self.inv_sqrt_num_eint)

        h_new = h
        if self.edge_atom_interaction is not None:
            h_new = h_new + self.edge_atom_interaction(
                m, bases["e2a"], g["trip_e2a"], id_swap, agg2_outer=a2ee2a["edge_index"][1],
                agg2_inner=a2ee2a["target_neighbor_idx"], agg2_size=num_atoms, pre=pre.get("e2a"))
        if self.atom_interaction is not None:
            h_new = h_new + self.atom_interaction(h, bases["a2a_rad"], a2a["edge_index"], a2a["target_neighbor_idx"])
        h = h_new * self.inv_sqrt_num_aint

        for layer in self.layers_before_skip:
            x = layer(x)
        m = x.add_(m).mul_(INV_SQRT_2)
        for layer in self.layers_after_skip:
            m = layer(m)
        for layer in self.atom_emb_layers:
            h = layer(h)
        h = (h + self.atom_update(h, m, bases["atom_update"], main["edge_index"][1])) * INV_SQRT_2
        m2 = self.concat_layer(h, m, main["edge_index"])
        for layer in self.residual_m:
            m2 = layer(m2)
        return h, m2.add_(m).mul_(INV_SQRT_2)
