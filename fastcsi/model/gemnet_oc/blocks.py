"""GemNet-OC interaction blocks: edge-to-edge triplet, quadruplet, atom-to-edge, edge-to-atom and
atom-to-atom message passing, merged and followed by residual/atom-update layers (JMP layout)."""
from __future__ import annotations

import math

from torch import nn

from fastcsi.model.gemnet_oc.interaction import interaction_bilinear
from fastcsi.model.gemnet_oc.layers import AtomUpdateBlock, Dense, EdgeEmbedding, ResidualLayer, ScaleFactor

INV_SQRT_2 = 1.0 / math.sqrt(2.0)


class EfficientInteractionBilinear(nn.Module):
    """Holds the bilinear weight (``bilinear.linear.weight``); the math lives in interaction.py."""

    def __init__(self, emb_size_in, emb_size_interm, emb_size_out, dropout=None):
        super().__init__()
        self.bilinear = Dense(emb_size_in * emb_size_interm, emb_size_out, activation=None, dropout=dropout)
        self.backend = "auto"

    def forward(self, basis, x, gather_idx, out_idx, out_inner, agg2_outer=None, agg2_inner=None, agg2_size=None):
        rad_W1, sph = basis
        out = interaction_bilinear(rad_W1, sph, x, gather_idx, out_idx, out_inner, self.bilinear.linear.weight,
                                   agg2_outer, agg2_inner, agg2_size, backend=self.backend)
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

    def forward(self, m, bases, idx, id_swap, expand_idx=None, agg2_outer=None, agg2_inner=None, agg2_size=None):
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

    def forward(self, m, bases, idx, id_swap):
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


class PairInteraction(nn.Module):
    def __init__(self, emb_size_atom, emb_size_pair_in, emb_size_pair_out, emb_size_rbf, activation=None, dropout=None):
        super().__init__()
        self.bilinear = Dense(emb_size_rbf * emb_size_pair_in, emb_size_pair_out, activation=None, dropout=dropout)
        self.scale_rbf_sum = ScaleFactor()
        self.down_projection = Dense(emb_size_atom, emb_size_pair_in, activation=activation, dropout=dropout)
        self.up_projection = Dense(emb_size_pair_out, emb_size_atom, activation=activation, dropout=dropout)

    def forward(self, h, rad_basis, edge_index, target_neighbor_idx):
        num_atoms = h.shape[0]
        x_ba = self.down_projection(h)[edge_index[0]]
        kmax = int(target_neighbor_idx.max()) + 1 if target_neighbor_idx.numel() else 0
        padded = x_ba.new_zeros(num_atoms, kmax, x_ba.shape[-1])
        padded[edge_index[1], target_neighbor_idx] = x_ba
        contracted = rad_basis @ padded  # (N, emb_rbf, emb_in)
        h_out = self.bilinear(contracted.reshape(num_atoms, contracted.shape[1] * contracted.shape[2]))
        h_out = self.scale_rbf_sum(h_out, ref=x_ba)
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

    def forward(self, h, m, bases, g):
        main, a2ee2a, a2a, id_swap = g["main"], g["a2ee2a"], g["a2a"], g["id_swap"]
        num_atoms = h.shape[0]
        # sums of fresh edge tensors are accumulated in place (no backward needs the operands)
        x = self.dense_ca(m).add_(self.trip_interaction(m, bases["e2e"], g["trip_e2e"], id_swap))
        if self.quad_interaction is not None:
            x.add_(self.quad_interaction(m, bases["qint"], g["quad"], id_swap))
        if self.atom_edge_interaction is not None:
            x.add_(self.atom_edge_interaction(h, bases["a2e"], g["trip_a2e"], id_swap, expand_idx=a2ee2a["edge_index"][0]))
        x.mul_(self.inv_sqrt_num_eint)

        h_new = h
        if self.edge_atom_interaction is not None:
            h_new = h_new + self.edge_atom_interaction(
                m, bases["e2a"], g["trip_e2a"], id_swap, agg2_outer=a2ee2a["edge_index"][1],
                agg2_inner=a2ee2a["target_neighbor_idx"], agg2_size=num_atoms)
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
