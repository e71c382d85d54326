"""GemNet-OC basis functions: radial (Gaussian / spherical Bessel / Bernstein times a smooth
envelope), circular (Legendre, i.e. m=0 spherical harmonics, of cos angle) and spherical (outer
product of two Legendre bases, or full real spherical harmonics), and the shared down-projections
of the bases that every interaction block reuses (JMP's ``Bases`` module, same parameter names).

Distances are scaled by the absolute rbf cutoff (JMP: 12 Å) when set, else by the cutoff of the
graph the distances come from (fairchem's convention).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fastcsi.backend import fused_enabled
from fastcsi.errors import FastCSIError
from fastcsi.model.gemnet_oc.interaction_cpu import gather_padded, padded_source
from fastcsi.model.gemnet_oc.layers import Dense, EdgeEmbedding, ScaleFactor, he_orthogonal_init


class PolynomialEnvelope(nn.Module):
    def __init__(self, exponent: int = 5):
        super().__init__()
        if exponent <= 0:
            raise FastCSIError("GemNet-OC: the polynomial envelope exponent must be positive")
        p = exponent
        self.p, self.a, self.b, self.c = p, -(p + 1) * (p + 2) / 2, p * (p + 2), -p * (p + 1) / 2

    def forward(self, d):
        env = 1 + self.a * d**self.p + self.b * d ** (self.p + 1) + self.c * d ** (self.p + 2)
        return torch.where(d < 1, env, torch.zeros_like(d))


class ExponentialEnvelope(nn.Module):
    def forward(self, d):
        env = torch.exp(-(d**2) / ((1 - d) * (1 + d)))
        return torch.where(d < 1, env, torch.zeros_like(d))


class GaussianBasis(nn.Module):
    def __init__(self, start=0.0, stop=5.0, num_gaussians=50, trainable=False, trainable_stds=False):
        super().__init__()
        offset = torch.linspace(start, stop, num_gaussians)
        if trainable:
            self.offset = nn.Parameter(offset)
        else:
            self.register_buffer("offset", offset)
        temp = 0.5 / ((stop - start) / (num_gaussians - 1)) ** 2
        if trainable_stds:
            self.temps = nn.Parameter(torch.full_like(offset, -temp))
        else:
            self.register_buffer("temps", torch.full_like(offset, temp))

    def forward(self, x):
        diff = x[:, None] - self.offset[None, :]
        return torch.exp(diff.square() * -(self.temps.abs()))


class SphericalBesselBasis(nn.Module):
    def __init__(self, num_radial: int, cutoff: float):
        super().__init__()
        self.norm_const = math.sqrt(2 / cutoff**3)
        self.frequencies = nn.Parameter(torch.tensor(np.pi * np.arange(1, num_radial + 1, dtype=np.float32)))

    def forward(self, d):
        return self.norm_const / d[:, None] * torch.sin(self.frequencies * d[:, None])


class BernsteinBasis(nn.Module):
    def __init__(self, num_radial: int, pregamma_initial: float = 0.45264):
        super().__init__()
        from scipy.special import binom

        self.register_buffer("prefactor", torch.tensor(binom(num_radial - 1, np.arange(num_radial)), dtype=torch.float),
                             persistent=False)
        self.pregamma = nn.Parameter(torch.tensor(pregamma_initial, dtype=torch.float))
        exp1 = torch.arange(num_radial)
        self.register_buffer("exp1", exp1[None, :], persistent=False)
        self.register_buffer("exp2", (num_radial - 1 - exp1)[None, :], persistent=False)

    def forward(self, d):
        gamma = torch.nn.functional.softplus(self.pregamma)
        e = torch.exp(-gamma * d)[:, None]
        return self.prefactor * (e**self.exp1) * ((1 - e) ** self.exp2)


class RadialBasis(nn.Module):
    """envelope(d / c) * rbf(d / c), c = absolute cutoff or the graph's cutoff."""

    def __init__(self, num_radial, cutoff, rbf=None, envelope=None, scale_basis=False, absolute_cutoff=None):
        super().__init__()
        rbf = dict(rbf or {"name": "gaussian"})
        envelope = dict(envelope or {"name": "polynomial", "exponent": 5})
        self.cutoff = float(absolute_cutoff) if absolute_cutoff else float(cutoff)
        self.scale_basis = scale_basis
        if scale_basis:
            self.scale_rbf = ScaleFactor()
        env_name = envelope.pop("name").lower()
        if env_name == "polynomial":
            self.envelope = PolynomialEnvelope(**envelope)
        elif env_name == "exponential":
            self.envelope = ExponentialEnvelope()
        else:
            raise FastCSIError(f"GemNet-OC: unknown envelope {env_name!r}")
        rbf_name = rbf.pop("name").lower()
        if rbf_name == "gaussian":
            self.rbf = GaussianBasis(start=0, stop=1, num_gaussians=num_radial, **rbf)
        elif rbf_name == "spherical_bessel":
            self.rbf = SphericalBesselBasis(num_radial=num_radial, cutoff=self.cutoff, **rbf)
        elif rbf_name == "bernstein":
            self.rbf = BernsteinBasis(num_radial=num_radial, **rbf)
        else:
            raise FastCSIError(f"GemNet-OC: unknown radial basis {rbf_name!r}")

    def forward(self, d):
        d_scaled = d / self.cutoff
        res = self.envelope(d_scaled)[:, None] * self.rbf(d_scaled)
        if self.scale_basis:
            res = self.scale_rbf(res)
        return res

    def sharing_key(self):
        """Two radial bases with equal keys give equal outputs on the same distances (so Bases
        computes them once): parameter-free ones with the same functions and settings; any other
        is only equal to itself."""
        if self.scale_basis or any(True for _ in self.parameters()):
            return ("module", id(self))
        env = self.envelope
        buffers = tuple((name, tuple(b.reshape(-1).tolist())) for name, b in self.rbf.named_buffers())
        return (type(self.rbf).__name__, type(env).__name__, getattr(env, "p", None), self.cutoff, buffers)


def legendre_basis(z: torch.Tensor, num: int) -> torch.Tensor:
    """Real m=0 spherical harmonics Y_l0 as functions of z = cos(theta), l < num: (n, num)."""
    polys = [torch.ones_like(z)]
    if num > 1:
        polys.append(z)
    for l in range(2, num):
        polys.append(((2 * l - 1) * z * polys[l - 1] - (l - 1) * polys[l - 2]) / l)
    return torch.stack([math.sqrt((2 * l + 1) / (4 * math.pi)) * polys[l] for l in range(num)], dim=1)


def real_spherical_harmonics(z: torch.Tensor, phi: torch.Tensor, num: int) -> torch.Tensor:
    """Real spherical harmonics up to degree num-1 from z = cos(theta) and phi: (n, num**2).
    Per degree l the order is m = 0, 1..l (cos terms), then m = l..1 (sin terms), as the
    reference lists them; associated Legendre polynomials carry the Condon-Shortley phase."""
    P = {(0, 0): torch.ones_like(z)}
    s = torch.sqrt(1 - z**2)
    for l in range(1, num):
        P[(l, l)] = (1 - 2 * l) * s * P[(l - 1, l - 1)]
    for m in range(0, num - 1):
        P[(m + 1, m)] = (2 * m + 1) * z * P[(m, m)]
    for l in range(2, num):
        for m in range(l - 1):
            P[(l, m)] = ((2 * l - 1) * z * P[(l - 1, m)] - (l + m - 1) * P[(l - 2, m)]) / (l - m)

    def norm(l, m):
        return math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - m) / math.factorial(l + m))

    cols = []
    for l in range(num):
        cols.append(norm(l, 0) * P[(l, 0)])
        for m in range(1, l + 1):
            cols.append(math.sqrt(2) * (-1) ** m * norm(l, m) * P[(l, m)] * torch.cos(m * phi))
        for m in range(l, 0, -1):
            cols.append(math.sqrt(2) * (-1) ** m * norm(l, m) * P[(l, m)] * torch.sin(m * phi))
    return torch.stack(cols, dim=1)


class CircularBasisLayer(nn.Module):
    def __init__(self, num_spherical, radial_basis: RadialBasis, cbf: dict, scale_basis=False):
        super().__init__()
        self.radial_basis = radial_basis
        self.num_spherical = num_spherical
        self.scale_basis = scale_basis
        if scale_basis:
            self.scale_cbf = ScaleFactor()
        cbf = dict(cbf)
        name = cbf.pop("name").lower()
        self.kind = name
        if name == "gaussian":
            self.cos_basis = GaussianBasis(start=-1, stop=1, num_gaussians=num_spherical, **cbf)
        elif name != "spherical_harmonics":
            raise FastCSIError(f"GemNet-OC: unknown circular basis {name!r}")

    def forward(self, d, cos_angle, rad=None):
        """``rad``: ``self.radial_basis(d)`` when the caller already has it."""
        rad = self.radial_basis(d) if rad is None else rad
        if self.kind == "gaussian":
            cir = self.cos_basis(cos_angle)
        else:
            cir = legendre_basis(cos_angle, self.num_spherical)
        if self.scale_basis:
            cir = self.scale_cbf(cir)
        return rad, cir


class SphericalBasisLayer(nn.Module):
    def __init__(self, num_spherical, radial_basis: RadialBasis, sbf: dict, scale_basis=False):
        super().__init__()
        self.num_spherical = num_spherical
        self.radial_basis = radial_basis
        self.scale_basis = scale_basis
        if scale_basis:
            self.scale_sbf = ScaleFactor()
        sbf = dict(sbf)
        name = sbf.pop("name").lower()
        self.kind = name
        if name == "gaussian_outer":
            self.circular_basis = GaussianBasis(start=-1, stop=1, num_gaussians=num_spherical, **sbf)
        elif name not in ("spherical_harmonics", "legendre_outer"):
            raise FastCSIError(f"GemNet-OC: unknown spherical basis {name!r}")

    def forward(self, d, cos_angle, dihedral, rad=None):
        rad = self.radial_basis(d) if rad is None else rad
        n = self.num_spherical
        if self.kind == "spherical_harmonics":
            sph = real_spherical_harmonics(cos_angle, dihedral, n)
        else:
            if self.kind == "legendre_outer":
                a, b = legendre_basis(cos_angle, n), legendre_basis(torch.cos(dihedral), n)
            else:
                a, b = self.circular_basis(cos_angle), self.circular_basis(torch.cos(dihedral))
            sph = (a[:, :, None] * b[:, None, :]).reshape(cos_angle.shape[0], a.shape[1] * b.shape[1])
        if self.scale_basis:
            sph = self.scale_sbf(sph)
        return rad, sph


class BasisEmbedding(nn.Module):
    """Projects a raw radial basis with a (num_radial, num_spherical, emb) weight and lays the
    circular/spherical basis out as a zero-padded (E, num_spherical, Kmax) matrix so the interaction
    can aggregate neighbours with one batched matmul (GemNet-OC's efficient reformulation)."""

    def __init__(self, num_radial, emb_size_interm, num_spherical=None):
        super().__init__()
        self.num_radial, self.num_spherical = num_radial, num_spherical
        shape = (emb_size_interm, num_radial) if num_spherical is None else (num_radial, num_spherical, emb_size_interm)
        self.weight = nn.Parameter(torch.empty(shape))
        he_orthogonal_init(self.weight)

    def forward(self, rad_basis, sph_basis=None, idx_rad_outer=None, idx_rad_inner=None,
                idx_sph_outer=None, idx_sph_inner=None, num_atoms=None):
        num_edges = rad_basis.shape[0]
        if self.num_spherical is not None:
            flat = self.weight.shape[1] * self.weight.shape[2]
            # same memory reinterpretation as the reference: (E, ns*emb) viewed as (E, ., n_sph)
            rad_W1 = (rad_basis @ self.weight.reshape(self.weight.shape[0], flat)).reshape(
                num_edges, flat // sph_basis.shape[-1], sph_basis.shape[-1]
            )
        else:
            rad_W1 = rad_basis @ self.weight.T
        if idx_rad_inner is not None:
            kmax = int(idx_rad_inner.max()) + 1 if idx_rad_inner.numel() else 0
            # zero-padded per atom: padded[outer, inner] = rad_W1, as one gather
            padded = gather_padded(rad_W1, padded_source(idx_rad_outer, idx_rad_inner, num_atoms, kmax, num_edges),
                                   num_atoms, kmax)
            rest = kmax * math.prod(rad_W1.shape[2:])
            rad_W1 = padded.transpose(1, 2).reshape(num_atoms, rad_W1.shape[1], rest)
        if sph_basis is None:
            return rad_W1
        if idx_sph_inner is None:
            return (rad_W1.index_select(0, idx_sph_outer) @ sph_basis[:, :, None]).squeeze(-1)
        kmax = int(idx_sph_inner.max()) + 1 if idx_sph_inner.numel() else 0
        src = padded_source(idx_sph_outer, idx_sph_inner, num_edges, kmax, sph_basis.shape[0])
        sph2 = gather_padded(sph_basis, src, num_edges, kmax)
        return rad_W1, sph2.transpose(1, 2)


def inner_product_clamped(x, y):
    return (x * y).sum(-1).clamp(min=-1, max=1)


def get_angle(r_ac, r_ab):
    x = (r_ac * r_ab).sum(-1)
    y = torch.cross(r_ac, r_ab, dim=-1).norm(dim=-1).clamp(min=1e-9)
    return torch.atan2(y, x)


class Bases(nn.Module):
    """Raw bases of every graph and their shared down-projections, plus the initial edge
    embedding m (JMP computes it here)."""

    def __init__(self, hp: dict, cutoffs: dict):
        super().__init__()
        nr, ns = hp["num_radial"], hp["num_spherical"]
        absolute = hp.get("absolute_rbf_cutoff")
        rbf, envelope, scale_basis = hp["rbf"], hp["envelope"], hp["scale_basis"]
        rbf_sph = hp.get("rbf_spherical") or rbf
        cbf, sbf = hp["cbf"], hp["sbf"]
        self.hp = {k: hp[k] for k in ("quad_interaction", "atom_edge_interaction", "edge_atom_interaction", "atom_interaction")}

        def radial(graph, spec):
            return RadialBasis(nr, cutoffs[graph], spec, envelope, scale_basis, absolute)

        self.radial_basis = radial("main", rbf)
        radial_sph = radial("main", rbf_sph)
        if hp["quad_interaction"]:
            self.cbf_basis_qint = CircularBasisLayer(ns, radial("qint", rbf_sph), cbf, scale_basis)
            self.sbf_basis_qint = SphericalBasisLayer(ns, radial_sph, sbf, scale_basis)
        if hp["atom_edge_interaction"] or hp["edge_atom_interaction"]:
            self.radial_basis_aeaint = radial("aeaint", rbf)
        if hp["atom_edge_interaction"]:
            self.cbf_basis_aeint = CircularBasisLayer(ns, radial_sph, cbf, scale_basis)
        if hp["edge_atom_interaction"]:
            self.cbf_basis_eaint = CircularBasisLayer(ns, radial("aeaint", rbf_sph), cbf, scale_basis)
        if hp["atom_interaction"]:
            self.radial_basis_aint = radial("aint", rbf)
        self.cbf_basis_tint = CircularBasisLayer(ns, radial_sph, cbf, scale_basis)

        er, ec, es = hp["emb_size_rbf"], hp["emb_size_cbf"], hp["emb_size_sbf"]
        drop = None  # JMP builds its shared Bases without dropout, whatever config.dropout says
        if hp["quad_interaction"]:
            self.mlp_rbf_qint = Dense(nr, er, dropout=drop)
            self.mlp_cbf_qint = BasisEmbedding(nr, ec, ns)
            self.mlp_sbf_qint = BasisEmbedding(nr, es, ns**2)
        if hp["atom_edge_interaction"]:
            self.mlp_rbf_aeint = Dense(nr, er, dropout=drop)
            self.mlp_cbf_aeint = BasisEmbedding(nr, ec, ns)
        if hp["edge_atom_interaction"]:
            self.mlp_rbf_eaint = Dense(nr, er, dropout=drop)
            self.mlp_cbf_eaint = BasisEmbedding(nr, ec, ns)
        if hp["atom_interaction"]:
            self.mlp_rbf_aint = BasisEmbedding(nr, er)
        self.mlp_rbf_tint = Dense(nr, er, dropout=drop)
        self.mlp_cbf_tint = BasisEmbedding(nr, ec, ns)
        self.mlp_rbf_h = Dense(nr, er, dropout=drop)
        self.mlp_rbf_out = Dense(nr, er, dropout=drop)
        self.edge_emb = EdgeEmbedding(hp["emb_size_atom"], nr, hp["emb_size_edge"], activation=hp["activation"], dropout=drop)

    @staticmethod
    def quad_angles(V_st, V_qint_st, quad_idx):
        V_ba = V_qint_st.index_select(0, quad_idx["triplet_in"]["out"])
        V_db = V_st.index_select(0, quad_idx["triplet_in"]["in"])
        cos_abd = inner_product_clamped(V_ba, V_db)
        V_db_cross = torch.cross(V_db, V_ba, dim=-1).index_select(0, quad_idx["trip_in_to_quad"])
        V_ca = V_st.index_select(0, quad_idx["triplet_out"]["out"])
        V_ba = V_qint_st.index_select(0, quad_idx["triplet_out"]["in"])
        cos_cab = inner_product_clamped(V_ca, V_ba)
        V_ca_cross = torch.cross(V_ca, V_ba, dim=-1).index_select(0, quad_idx["trip_out_to_quad"])
        # The reference keeps the half angle (no parity).
        return cos_cab, cos_abd, get_angle(V_ca_cross, V_db_cross)

    def forward(self, h, g) -> dict:
        """``g``: the GemNetGraphs dict (graphs and index sets). Returns the bases dict."""
        main, a2a, a2ee2a, qint = g["main"], g["a2a"], g["a2ee2a"], g["qint"]
        te2e, ta2e, te2a, quad = g["trip_e2e"], g["trip_a2e"], g["trip_e2a"], g["quad"]
        num_atoms = h.shape[0]
        computed = {}

        def radial(module, distance):
            # equal radial bases of the same distances (several layers share one) are computed once
            key = (module.sharing_key(), id(distance))
            if key not in computed:
                computed[key] = module(distance)
            return computed[key]

        def pick(table, index):
            return table.index_select(0, index)

        rad_main = radial(self.radial_basis, main["distance"])
        out = {}

        cos_e2e = inner_product_clamped(pick(main["vector"], te2e["out"]), pick(main["vector"], te2e["in"]))
        rad_cir_e2e, cir_e2e = self.cbf_basis_tint(
            main["distance"], cos_e2e, rad=radial(self.cbf_basis_tint.radial_basis, main["distance"]))
        if self.hp["quad_interaction"]:
            cos_cab, cos_abd, angle_cabd = self.quad_angles(main["vector"], qint["vector"], quad)
            rad_cir_q, cir_q = self.cbf_basis_qint(
                qint["distance"], cos_abd, rad=radial(self.cbf_basis_qint.radial_basis, qint["distance"]))
            rad_sph_q, sph_q = self.sbf_basis_qint(
                main["distance"], pick(cos_cab, quad["trip_out_to_quad"]), angle_cabd,
                rad=radial(self.sbf_basis_qint.radial_basis, main["distance"]))
            out["qint"] = {
                "rad": self.mlp_rbf_qint(rad_main),
                "cir": self.mlp_cbf_qint(rad_cir_q, cir_q, idx_sph_outer=quad["triplet_in"]["out"]),
                "sph": list(self.mlp_sbf_qint(rad_sph_q, sph_q, idx_sph_outer=quad["out"], idx_sph_inner=quad["out_agg"])),
            }
        if self.hp["atom_edge_interaction"]:
            rad_a2ee2a = radial(self.radial_basis_aeaint, a2ee2a["distance"])
            cos_a2e = inner_product_clamped(pick(main["vector"], ta2e["out"]), pick(a2ee2a["vector"], ta2e["in"]))
            rad_cir_a2e, cir_a2e = self.cbf_basis_aeint(
                main["distance"], cos_a2e, rad=radial(self.cbf_basis_aeint.radial_basis, main["distance"]))
            out["a2e"] = {
                "rad": self.mlp_rbf_aeint(rad_a2ee2a),
                "cir": list(self.mlp_cbf_aeint(rad_cir_a2e, cir_a2e, idx_sph_outer=ta2e["out"], idx_sph_inner=ta2e["out_agg"])),
            }
        if self.hp["edge_atom_interaction"]:
            cos_e2a = inner_product_clamped(pick(a2ee2a["vector"], te2a["out"]), pick(main["vector"], te2a["in"]))
            rad_cir_e2a, cir_e2a = self.cbf_basis_eaint(
                a2ee2a["distance"], cos_e2a, rad=radial(self.cbf_basis_eaint.radial_basis, a2ee2a["distance"]))
            out["e2a"] = {
                "rad": self.mlp_rbf_eaint(rad_main),
                "cir": list(self.mlp_cbf_eaint(
                    rad_cir_e2a, cir_e2a,
                    idx_rad_outer=a2ee2a["edge_index"][1], idx_rad_inner=a2ee2a["target_neighbor_idx"],
                    idx_sph_outer=te2a["out"], idx_sph_inner=te2a["out_agg"], num_atoms=num_atoms,
                )),
            }
        if self.hp["atom_interaction"]:
            out["a2a_rad"] = self.mlp_rbf_aint(
                radial(self.radial_basis_aint, a2a["distance"]),
                idx_rad_outer=a2a["edge_index"][1], idx_rad_inner=a2a["target_neighbor_idx"], num_atoms=num_atoms,
            )
        out["e2e"] = {
            "rad": self.mlp_rbf_tint(rad_main),
            "cir": list(self.mlp_cbf_tint(rad_cir_e2e, cir_e2e, idx_sph_outer=te2e["out"], idx_sph_inner=te2e["out_agg"])),
        }
        if fused_enabled() and h.device.type == "cpu":
            # every block contracts the same radial and angular bases first: do it once here
            for key, part in (("e2e", "cir"), ("a2e", "cir"), ("qint", "sph")):
                if key in out:
                    rad_W1, sph = out[key][part]
                    out[key][part + "_pre"] = torch.matmul(rad_W1, sph)  # (E, d_interm, Kmax)
        out["atom_update"] = self.mlp_rbf_h(rad_main)
        out["output"] = self.mlp_rbf_out(rad_main)
        out["m"] = self.edge_emb(h, rad_main, main["edge_index"])
        return out
