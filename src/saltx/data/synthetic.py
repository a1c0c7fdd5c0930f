"""Physics-motivated synthetic jets in the Salt/UPP h5 layout.

The generator writes ``train.h5``, ``val.h5``, ``test.h5``, ``norm_dict.yaml`` and
``class_dict.yaml`` exactly as UPP lays them out (structured datasets ``jets`` ``(N,)``,
``tracks`` ``(N, T)``, ``electrons`` ``(N, M)`` with a boolean ``valid`` field, valid
constituents first), so every part of saltx can be exercised without real ATLAS files.

Physics, in short (all vectorised over jets; no Python loop over jets):

* Flavours b / c / light / tau with fractions 0.35 / 0.20 / 0.40 / 0.05, jet pt from a
  falling power law on 20-400 GeV, ``|eta| < 2.5``. Momenta are stored in **MeV**, lengths
  in **mm**, like ATLAS files.
* b jets carry a B hadron (ctau 0.45 mm, m 5.28 GeV) decaying at an exponential distance
  boosted by ``pt/m``, with a D cascade (ctau 0.12-0.31 mm) starting at the B vertex; c jets
  carry only the D; tau jets a 1- or 3-prong tau (ctau 0.087 mm). Light jets (and all others)
  may contain a K-short (ctau 26.8 mm), labelled OtherSecondary.
* Track impact parameters follow from the decay geometry in the transverse plane:
  ``d0 = y cos(phi_t) - x sin(phi_t)`` for a production vertex ``(x, y)`` (jet frame), and
  they are lifetime-signed with ``sign(sin(phi_jet - phi_t))``; resolution
  ``sigma(d0) = sqrt(a^2 + (b / (pt sqrt(sin theta)))^2)`` with a = 10 um, b = 70 um GeV,
  worse without an innermost-layer hit, and a small non-Gaussian tail for mismeasured
  prompt tracks (the main source of light-jet mistags).
* Prompt, pileup (``|z0 sin theta| < 3 mm``, low pt) and fake tracks (few hits, large
  uncertainties), hit counts from the production radius versus the pixel layer radii,
  shared/split hits increasing with jet pt. Tracks pass ``pt > 0.5 GeV``, ``|eta| < 2.5``,
  ``|d0| < 3.5 mm``, ``|z0 sin theta| < 3 mm``, >= 1 pixel hit and >= 7 silicon hits.
* Soft electrons from semileptonic decays (and hadron fakes, conversions) with
  shower-shape variables that overlap between electrons and hadrons; GN2emu-style global
  soft-muon variables; a simple, imperfect likelihood-style reference tagger
  ``ref_pb/ref_pc/ref_pu``.

Conventions chosen here (documented for readers of the files):

* ``HadronConeExclTruthLabelPt`` (hadron / visible tau pt, MeV) and
  ``HadronConeExclTruthLabelLxy`` (transverse decay length, mm) are **NaN for light jets**.
* ``mass_param`` (GeV) is drawn from :data:`MASS_PARAM_VALUES` for b jets, whose jet
  ``mass`` (MeV) then peaks at ``1000 * mass_param`` (a signal hypothesis, for parameterised
  networks); it is ``-1`` for all other jets (not in any train list, so the data layer draws
  a value for them, as in Salt).
* Electron candidates: real electrons from HF decays (FromB/FromBC/FromC/FromTau), hadrons
  faking electrons (Primary, or FromB/FromC for decay products in HF jets), conversions
  (OtherSecondary), and rare Pileup/Fake candidates.
* At most 60 track candidates exist per jet; slots beyond are padding.
* ``ftagTruthVertexIndex``: 0 for primary tracks (the primary vertex), 1.. for secondary
  vertices (b: B = 1, B->D = 2; c: D = 1; tau: 1; K-short: 3), -1 for pileup, fake and
  padded tracks. ``ftagTruthOriginLabel`` is -1 in padded slots.
* Soft-muon variables are 0 for jets without a soft muon (all finite).
* Padded constituent slots hold NaN in every float field (hit counts are stored as ``f4``),
  ``-1`` in integer labels and ``False`` in ``valid``.
* ``jets.n_tracks`` is the number of valid tracks stored (after truncation to T slots).
* Tracks are sorted by descending ``IP3D_signed_d0_significance``, electrons by descending pt.

Difficulty: ``difficulty`` (default 1) multiplies the impact-parameter resolution (both
terms of ``sigma(d0)`` and ``sigma(z0)``) and the fraction of prompt tracks with
mismeasured impact parameters (1.5 % at 1). Larger values make heavy-flavour tracks look
more prompt and light jets more often displaced, so rejections drop (e.g. for rejections
that stay measurable with a small model and test file). The random stream does not
depend on it: ``difficulty=1`` writes exactly the default files.

Randomness: each block of ``block_size`` jets of a split has its own generator seeded by
``(seed, crc32(split name), block index)``, so the output does not depend on the chunk size
used for writing, nor on which other splits are written.

Run ``python -m saltx.data.synthetic --out DIR --n-jets N`` to write a dataset.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import yaml

from saltx.data.class_weights import class_weights
from saltx.data.norm import RunningStats

FLAVOURS: tuple[str, ...] = ("bjets", "cjets", "ujets", "taujets")
FLAVOUR_FRACTIONS: tuple[float, ...] = (0.35, 0.20, 0.40, 0.05)
HADRON_LABEL_IDS: tuple[int, ...] = (5, 4, 0, 15)
MASS_PARAM_VALUES: tuple[float, ...] = (5.0, 16.0, 25.0, 40.0, 55.0)
HADRON_LABEL_IDS_SORTED: tuple[int, ...] = tuple(sorted(HADRON_LABEL_IDS))

# ftagTruthOriginLabel values (their names are the track origin task's default class names)
PILEUP, FAKE, PRIMARY, FROM_B, FROM_BC, FROM_C, FROM_TAU, OTHER_SECONDARY = range(8)

GN2_TRACK_VARS: tuple[str, ...] = (
    "d0",
    "z0SinTheta",
    "dphi",
    "deta",
    "qOverP",
    "IP3D_signed_d0_significance",
    "IP3D_signed_z0_significance",
    "phiUncertainty",
    "thetaUncertainty",
    "qOverPUncertainty",
    "numberOfPixelHits",
    "numberOfSCTHits",
    "numberOfInnermostPixelLayerHits",
    "numberOfNextToInnermostPixelLayerHits",
    "numberOfInnermostPixelLayerSharedHits",
    "numberOfInnermostPixelLayerSplitHits",
    "numberOfPixelSharedHits",
    "numberOfPixelSplitHits",
    "numberOfSCTSharedHits",
)
TRACK_VARS: tuple[str, ...] = (
    *GN2_TRACK_VARS,
    "numberOfPixelHoles",
    "numberOfSCTHoles",
    "pt",
    "eta",
    "phi",
    "subjetIndex",
)
TRACK_LABELS: tuple[str, ...] = ("ftagTruthOriginLabel", "ftagTruthVertexIndex")

ELECTRON_VARS: tuple[str, ...] = (
    "pt",
    "ptfrac",
    "ptrel",
    "dr",
    "abs_eta",
    "eta",
    "phi",
    "ftag_et",
    "qOverP",
    "d0RelativeToBeamspotSignificance",
    "ftag_z0AlongBeamspotSignificance",
    "ftag_ptVarCone30OverPt",
    "numberOfPixelHits",
    "numberOfSCTHitsInclDead",
    "ftag_deltaPOverP",
    "eProbabilityHT",
    "deltaEta1",
    "deltaPhiRescaled2",
    "ftag_energyOverP",
    "Rhad",
    "Rhad1",
    "Eratio",
    "weta2",
    "Rphi",
    "Reta",
    "wtots1",
    "f1",
    "f3",
)
ELECTRON_LABELS: tuple[str, ...] = ("ftagTruthOriginLabel",)

SOFT_MUON_VARS: tuple[str, ...] = (
    "softMuon_pt",
    "softMuon_dR",
    "softMuon_qOverPratio",
    "softMuon_momentumBalanceSignificance",
    "softMuon_scatteringNeighbourSignificance",
    "softMuon_pTrel",
    "softMuon_ip3dD0Significance",
)
JET_FLOAT_VARS: tuple[str, ...] = (
    "pt_btagJes",
    "eta_btagJes",
    "pt",
    "eta",
    "mass",
    "HadronConeExclTruthLabelPt",
    "HadronConeExclTruthLabelLxy",
    "mass_param",
    *SOFT_MUON_VARS,
    "ref_pb",
    "ref_pc",
    "ref_pu",
)
JET_LABELS: tuple[str, ...] = ("flavour_label", "HadronConeExclTruthLabelID")

JET_DTYPE = np.dtype(
    [(v, "f4") for v in JET_FLOAT_VARS[:5]]
    + [(lab, "i4") for lab in JET_LABELS]
    + [(v, "f4") for v in JET_FLOAT_VARS[5:8]]
    + [("n_tracks", "i4")]
    + [(v, "f4") for v in JET_FLOAT_VARS[8:]]
)
TRACK_DTYPE = np.dtype(
    [(v, "f4") for v in TRACK_VARS] + [(lab, "i4") for lab in TRACK_LABELS] + [("valid", "?")]
)
ELECTRON_DTYPE = np.dtype(
    [(v, "f4") for v in ELECTRON_VARS] + [(lab, "i4") for lab in ELECTRON_LABELS] + [("valid", "?")]
)

#: Fields that go into ``norm_dict.yaml`` (every non-label input field).
NORM_VARS: dict[str, tuple[str, ...]] = {
    "jets": (*JET_FLOAT_VARS, "n_tracks"),
    "tracks": TRACK_VARS,
    "electrons": ELECTRON_VARS,
}

DEFAULT_BLOCK_SIZE = 1024
DEFAULT_CHUNK_SIZE = 16_384

# Physics constants (GeV, mm).
_B_CTAU = 0.455
_D_CTAUS, _D_CTAU_PROBS = (0.312, 0.123, 0.150), (0.35, 0.5, 0.15)
_TAU_CTAU = 0.087
_KS_CTAU = 26.84
_PIXEL_RADII = (33.25, 50.5, 88.5, 122.5)
_SCT_RADIUS = 299.0
_TRACK_PT_MIN = 0.5  # GeV
_D0_RES_A, _D0_RES_B = 0.010, 0.070  # mm, mm GeV
_Z0_RES_A, _Z0_RES_B = 0.020, 0.085


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _wrap(phi: np.ndarray) -> np.ndarray:
    """Wrap angles into (-pi, pi]."""
    return np.pi - np.mod(np.pi - phi, 2.0 * np.pi)


def _slot_mask(counts: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` bool, True for the first ``counts[i]`` slots of row i."""
    return np.arange(k)[None, :] < np.asarray(counts)[:, None]


def _shares(rng: np.random.Generator, valid: np.ndarray, alpha: float = 2.0) -> np.ndarray:
    """Dirichlet-like momentum shares over the valid slots of each row, ``(n, k)``."""
    g = rng.gamma(alpha, size=valid.shape) * valid
    tot = g.sum(axis=1, keepdims=True)
    return np.divide(g, tot, out=np.zeros_like(g), where=tot > 0)


def _decay_length(rng: np.random.Generator, pt: np.ndarray, mass: float, ctau) -> np.ndarray:
    """Transverse decay length (mm) of a particle with transverse momentum ``pt`` (GeV)."""
    return (pt / mass) * np.asarray(ctau) * rng.exponential(size=np.shape(pt))


def _pick(rng: np.random.Generator, values: Sequence[float], probs, size) -> np.ndarray:
    return np.asarray(values)[rng.choice(len(values), p=probs, size=size)]


def _split_seed(split: str) -> int:
    return zlib.crc32(split.encode())


# ---------------------------------------------------------------------------------------
# jets
# ---------------------------------------------------------------------------------------


def _jet_kinematics(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Flavour, pt (GeV), eta, phi of ``n`` jets and their heavy hadron / tau."""
    flav = rng.choice(len(FLAVOURS), p=FLAVOUR_FRACTIONS, size=n)
    # pdf ~ pt^-1.5 on [20, 400] GeV by inverse transform
    lo, hi = 20.0**-0.5, 400.0**-0.5
    pt = (lo - rng.uniform(size=n) * (lo - hi)) ** -2.0
    eta = rng.uniform(-2.5, 2.5, size=n)
    phi = rng.uniform(-np.pi, np.pi, size=n)
    # heavy hadron (b, c) or visible tau momentum fraction
    z = np.select(
        [flav == 0, flav == 1, flav == 3],
        [rng.beta(7.0, 2.5, n), rng.beta(4.0, 3.0, n), rng.beta(4.0, 2.5, n)],
        0.0,
    )
    return {"flav": flav, "pt": pt, "eta": eta, "phi": phi, "z": z, "had_pt": z * pt}


# ---------------------------------------------------------------------------------------
# tracks
# ---------------------------------------------------------------------------------------


def _empty_group(n: int, k: int) -> dict[str, np.ndarray]:
    z = np.zeros((n, k))
    return {
        "valid": np.zeros((n, k), bool),
        "pt": z + _TRACK_PT_MIN,
        "deta": z.copy(),
        "dphi": z.copy(),
        "x": z.copy(),
        "y": z.copy(),
        "z": z.copy(),
        "origin": np.full((n, k), PRIMARY, np.int32),
        "vertex": np.zeros((n, k), np.int32),
        "tail": np.zeros((n, k), bool),
    }


@dataclass(frozen=True)
class _Decay:
    """A decaying particle: mass (GeV), track slots, the fraction of the momentum that
    its charged prongs share, and the truth labels of those prongs."""

    mass: float
    slots: int
    charged_frac: float
    origin: int
    vertex: int


_B_DECAY = _Decay(mass=5.28, slots=4, charged_frac=0.75, origin=FROM_B, vertex=1)
_D_FROM_B_DECAY = _Decay(mass=1.87, slots=4, charged_frac=0.65, origin=FROM_BC, vertex=2)
_D_DECAY = _Decay(mass=1.87, slots=4, charged_frac=0.65, origin=FROM_C, vertex=1)
_TAU_DECAY = _Decay(mass=1.777, slots=3, charged_frac=0.9, origin=FROM_TAU, vertex=1)
_KS_DECAY = _Decay(mass=0.498, slots=2, charged_frac=1.0, origin=OTHER_SECONDARY, vertex=3)


def _decay_group(
    rng: np.random.Generator,
    jets: dict[str, np.ndarray],
    decay: _Decay,
    *,
    has: np.ndarray,
    n_prongs: np.ndarray,
    parent_pt: np.ndarray,
    prong_pt: np.ndarray,
    ctau: float | np.ndarray,
    direction: tuple[np.ndarray, np.ndarray],
    start: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Tracks from a decay vertex: geometry of the vertex and its charged prongs.

    Parameters
    ----------
    has, n_prongs
        ``(n,)`` whether the jet holds this decay, and its number of charged prongs.
    parent_pt
        ``(n,)`` pt (GeV) of the decaying particle (sets the boost of the decay length).
    prong_pt
        ``(n,)`` pt (GeV) that the prongs share (times ``decay.charged_frac``).
    ctau
        Proper decay length (mm), scalar or ``(n,)``.
    direction
        ``(deta, dphi)`` ``(n,)`` of the particle relative to the jet axis.
    start
        Production vertex ``(x, y, z)`` ``(n,)``; None for the primary vertex.

    Returns
    -------
    tuple
        The track group ``(n, slots)`` and the decay vertex ``{x, y, z, lxy}`` ``(n,)`` in
        the jet frame (x along the jet's transverse direction, z along the beam).
    """
    n, k = has.shape[0], decay.slots
    x0, y0, z0 = start if start is not None else (np.zeros(n),) * 3
    deta_h, dphi_h = direction
    lxy = _decay_length(rng, np.maximum(parent_pt, 1e-3), decay.mass, ctau) * has
    vx = x0 + lxy * np.cos(dphi_h)
    vy = y0 + lxy * np.sin(dphi_h)
    vz = z0 + lxy * np.sinh(jets["eta"] + deta_h)
    g = _empty_group(n, k)
    g["valid"] = _slot_mask(np.where(has, n_prongs, 0), k)
    share = _shares(rng, g["valid"])
    g["pt"] = np.maximum(prong_pt, 0.0)[:, None] * decay.charged_frac * share
    spread = np.clip(0.8 * decay.mass / np.maximum(parent_pt, 1.0), 0.005, 0.4)[:, None]
    g["deta"] = deta_h[:, None] + rng.normal(size=(n, k)) * spread
    g["dphi"] = dphi_h[:, None] + rng.normal(size=(n, k)) * spread
    g["x"] = np.repeat(vx[:, None], k, axis=1)
    g["y"] = np.repeat(vy[:, None], k, axis=1)
    g["z"] = np.repeat(vz[:, None], k, axis=1)
    g["origin"][:] = decay.origin
    g["vertex"][:] = decay.vertex
    return g, {"x": vx, "y": vy, "z": vz, "lxy": np.hypot(vx, vy)}


def _hadron_direction(rng: np.random.Generator, had_pt: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(deta, dphi)`` of a hadron relative to the jet axis, narrower at high pt."""
    s = 0.02 + 0.4 / np.maximum(had_pt, 1.0)
    return rng.normal(size=had_pt.shape) * s, rng.normal(size=had_pt.shape) * s


def _track_groups(
    rng: np.random.Generator, jets: dict[str, np.ndarray], difficulty: float = 1.0
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """All track candidates of a block, by category, and the hadron Lxy (mm, NaN light).

    ``difficulty`` multiplies the fraction of prompt tracks with mismeasured impact
    parameters (the same random draws are used for every value).
    """
    n = jets["pt"].shape[0]
    flav, pt, had_pt = jets["flav"], jets["pt"], jets["had_pt"]
    is_b, is_c, is_tau = flav == 0, flav == 1, flav == 3
    prongs = (0, 1, 2, 3, 4)

    # b jets: B vertex, then a D cascade starting at the B vertex
    b_dir = _hadron_direction(rng, had_pt)
    d_from_b_pt = had_pt * rng.beta(5.0, 3.0, n)
    d_ctau = _pick(rng, _D_CTAUS, _D_CTAU_PROBS, n)
    b_group, b_vtx = _decay_group(
        rng, jets, _B_DECAY, has=is_b, ctau=_B_CTAU, direction=b_dir,
        n_prongs=_pick(rng, prongs, (0.05, 0.25, 0.35, 0.22, 0.13), n),
        parent_pt=had_pt, prong_pt=had_pt - d_from_b_pt,
    )  # fmt: skip
    kick = np.clip(1.5 / np.maximum(had_pt, 1.0), 0.0, 0.2)
    bc_group, _ = _decay_group(
        rng, jets, _D_FROM_B_DECAY, has=is_b, ctau=d_ctau,
        n_prongs=_pick(rng, prongs, (0.12, 0.3, 0.33, 0.15, 0.10), n),
        parent_pt=d_from_b_pt, prong_pt=d_from_b_pt,
        direction=(b_dir[0] + rng.normal(size=n) * kick, b_dir[1] + rng.normal(size=n) * kick),
        start=(b_vtx["x"], b_vtx["y"], b_vtx["z"]),
    )  # fmt: skip

    # c jets: a single D vertex
    c_group, c_vtx = _decay_group(
        rng, jets, _D_DECAY, has=is_c, ctau=d_ctau,
        n_prongs=_pick(rng, prongs, (0.1, 0.3, 0.35, 0.15, 0.10), n),
        parent_pt=had_pt, prong_pt=had_pt, direction=_hadron_direction(rng, had_pt),
    )  # fmt: skip

    # tau jets: 1 or 3 prongs
    t_group, t_vtx = _decay_group(
        rng, jets, _TAU_DECAY, has=is_tau, ctau=_TAU_CTAU,
        n_prongs=np.where(rng.uniform(size=n) < 0.72, 1, 3),
        parent_pt=had_pt, prong_pt=had_pt, direction=_hadron_direction(rng, had_pt),
    )  # fmt: skip

    # K-short (OtherSecondary) in any jet
    ks_pt = pt * rng.beta(1.5, 8.0, n) + 1.0
    ks_group, _ = _decay_group(
        rng, jets, _KS_DECAY, has=rng.uniform(size=n) < 0.12 * (1.0 + pt / 200.0),
        ctau=_KS_CTAU, n_prongs=np.full(n, 2), parent_pt=ks_pt, prong_pt=ks_pt,
        direction=_hadron_direction(rng, ks_pt),
    )  # fmt: skip
    groups = [b_group, bc_group, c_group, t_group, ks_group]

    # prompt fragmentation tracks
    log_pt = np.log(pt / 20.0)
    mu = np.select(
        [is_b | is_c, is_tau], [2.0 + 3.5 * log_pt, 0.6 + 1.0 * log_pt], 3.5 + 4.5 * log_pt
    )
    k_p = 36
    n_p = np.minimum(rng.poisson(mu), k_p)
    p = _empty_group(n, k_p)
    p["valid"] = _slot_mask(n_p, k_p)
    frag_pt = np.maximum(0.6 * (pt - had_pt) - _TRACK_PT_MIN * n_p, 0.5)
    p["pt"] = _TRACK_PT_MIN + frag_pt[:, None] * _shares(rng, p["valid"], 0.6)
    width = (0.04 + 0.12 * np.sqrt(20.0 / pt))[:, None] * np.where(is_tau, 0.5, 1.0)[:, None]
    width = width / np.sqrt(np.clip(p["pt"], 0.5, None) / 2.0) ** 0.5
    p["deta"] = np.clip(rng.normal(size=(n, k_p)) * width, -0.6, 0.6)
    p["dphi"] = np.clip(rng.normal(size=(n, k_p)) * width, -0.6, 0.6)
    p["tail"] = rng.uniform(size=(n, k_p)) < min(0.015 * difficulty, 1.0)
    groups.append(p)

    # pileup: low pt, flat in the cone, displaced along z (within the association cut)
    k_pu = 5
    pu = _empty_group(n, k_pu)
    pu["valid"] = _slot_mask(np.minimum(rng.poisson(0.8, n), k_pu), k_pu)
    pu["pt"] = _TRACK_PT_MIN + rng.exponential(0.8, (n, k_pu))
    pu["deta"] = rng.uniform(-0.4, 0.4, (n, k_pu))
    pu["dphi"] = rng.uniform(-0.4, 0.4, (n, k_pu))
    pu["z"] = rng.uniform(-3.0, 3.0, (n, k_pu)) * np.cosh(jets["eta"][:, None] + pu["deta"])
    pu["origin"][:] = PILEUP
    pu["vertex"][:] = -1
    groups.append(pu)

    # fakes: random hits combined into a track
    k_f = 2
    fk = _empty_group(n, k_f)
    fk["valid"] = _slot_mask(np.minimum(rng.poisson(0.1 + 0.3 * pt / 400.0), k_f), k_f)
    fk["pt"] = _TRACK_PT_MIN + rng.exponential(2.0, (n, k_f))
    fk["deta"] = rng.uniform(-0.4, 0.4, (n, k_f))
    fk["dphi"] = rng.uniform(-0.4, 0.4, (n, k_f))
    phi_f = rng.uniform(-np.pi, np.pi, (n, k_f))
    r_f = np.abs(rng.normal(0.0, 0.6, (n, k_f)))  # apparent vertex, mm
    fk["x"], fk["y"] = r_f * np.cos(phi_f), r_f * np.sin(phi_f)
    fk["z"] = rng.normal(0.0, 0.5, (n, k_f))
    fk["origin"][:] = FAKE
    fk["vertex"][:] = -1
    groups.append(fk)

    lxy = np.select([is_b, is_c, is_tau], [b_vtx["lxy"], c_vtx["lxy"], t_vtx["lxy"]], np.nan)
    return groups, lxy


def _hit_pattern(
    rng: np.random.Generator, r: np.ndarray, fake: np.ndarray, density: np.ndarray
) -> dict[str, np.ndarray]:
    """Hit, hole, shared and split counts from the production radius ``r`` (mm)."""
    shape = r.shape

    def hit(radius: float, eff: float = 0.97) -> np.ndarray:
        return ((r < radius) & (rng.uniform(size=shape) < eff)).astype(np.float64)

    def binom(k: int, p) -> np.ndarray:
        return rng.binomial(k, np.broadcast_to(p, shape)).astype(np.float64)

    ibl = hit(_PIXEL_RADII[0]) + (r < _PIXEL_RADII[0]) * binom(1, 0.06)
    nibl = hit(_PIXEL_RADII[1]) + (r < _PIXEL_RADII[1]) * binom(1, 0.05)
    pix = ibl + nibl + hit(_PIXEL_RADII[2]) + hit(_PIXEL_RADII[3]) + binom(1, 0.15)
    sct = (r < _SCT_RADIUS) * (8.0 - binom(8, 0.02)) + binom(2, 0.3)
    pix_holes = rng.poisson(np.where(fake, 0.6, 0.03))
    sct_holes = rng.poisson(np.where(fake, 1.2, 0.08))
    # fakes: few, random hits
    ibl = np.where(fake, binom(1, 0.5), ibl)
    nibl = np.where(fake, binom(1, 0.5), nibl)
    pix = np.where(fake, ibl + nibl + binom(2, 0.4), pix)
    sct = np.where(fake, 4.0 + binom(4, 0.6), sct)
    p_sh = 0.01 + 0.08 * density
    ibl_shared = np.minimum(ibl, binom(1, p_sh))
    ibl_split = np.minimum(ibl, binom(1, 0.6 * p_sh))
    return {
        "numberOfPixelHits": pix,
        "numberOfSCTHits": sct,
        "numberOfInnermostPixelLayerHits": ibl,
        "numberOfNextToInnermostPixelLayerHits": nibl,
        "numberOfInnermostPixelLayerSharedHits": ibl_shared,
        "numberOfInnermostPixelLayerSplitHits": ibl_split,
        "numberOfPixelSharedHits": ibl_shared + np.minimum(pix - ibl, binom(3, 0.5 * p_sh)),
        "numberOfPixelSplitHits": ibl_split + np.minimum(pix - ibl, binom(3, 0.3 * p_sh)),
        "numberOfSCTSharedHits": binom(8, 0.01 + 0.02 * density),
        "numberOfPixelHoles": pix_holes.astype(np.float64),
        "numberOfSCTHoles": sct_holes.astype(np.float64),
    }


def _make_tracks(
    rng: np.random.Generator, jets: dict[str, np.ndarray], n_tracks: int, difficulty: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Structured ``tracks`` ``(n, n_tracks)`` and the jets' hadron Lxy ``(n,)``.

    ``difficulty`` scales the impact-parameter resolution and the tail fraction.
    """
    groups, lxy = _track_groups(rng, jets, difficulty)
    c = {key: np.concatenate([g[key] for g in groups], axis=1) for key in groups[0]}
    n, k = c["pt"].shape
    jet_eta = jets["eta"][:, None]
    fake = c["origin"] == FAKE
    density = np.clip(jets["pt"] / 400.0, 0.0, 1.0)[:, None] + 0.5 * (c["origin"] >= FROM_B)

    pt = np.maximum(c["pt"], 1e-3)  # GeV
    eta = jet_eta + c["deta"]
    dphi = _wrap(c["dphi"])
    sin_theta = 1.0 / np.cosh(eta)
    cos_p, sin_p = np.cos(dphi), np.sin(dphi)

    r_prod = np.hypot(c["x"], c["y"])
    hits = _hit_pattern(rng, r_prod, fake, density)
    no_ibl = hits["numberOfInnermostPixelLayerHits"] == 0
    degrade = (
        np.where(no_ibl, 1.8, 1.0)
        * (1.0 + 0.3 * hits["numberOfInnermostPixelLayerSharedHits"])
        * np.where(fake, 3.0, 1.0)
    )
    pterm = 1.0 / (pt * np.sqrt(sin_theta))
    res = float(difficulty)  # 1.0 multiplies exactly: the default files do not change
    sig_d0 = np.hypot(_D0_RES_A * res, _D0_RES_B * res * pterm) * degrade
    sig_z0 = np.hypot(_Z0_RES_A * res, _Z0_RES_B * res * pterm) * degrade
    true_scale = np.where(c["tail"], rng.uniform(2.0, 8.0, (n, k)), 1.0)

    # impact parameters from the production vertex (jet frame; x along the jet)
    d0_true = c["y"] * cos_p - c["x"] * sin_p
    z0_true = c["z"] - (c["x"] * cos_p + c["y"] * sin_p) * np.sinh(eta)
    d0 = d0_true + rng.normal(size=(n, k)) * sig_d0 * true_scale
    z0st = z0_true * sin_theta + rng.normal(size=(n, k)) * sig_z0 * true_scale
    rep = np.exp(rng.normal(0.0, 0.05, (n, k)))  # reported / true core uncertainty
    sig_d0_rep, sig_z0_rep = sig_d0 * rep, sig_z0 * rep
    sign_d0 = np.where(d0 * -sin_p >= 0.0, 1.0, -1.0)
    sign_z0 = np.where(z0st * (jet_eta - eta) >= 0.0, 1.0, -1.0)
    sd0 = sign_d0 * np.abs(d0) / sig_d0_rep
    sz0 = sign_z0 * np.abs(z0st) / sig_z0_rep

    charge = np.where(rng.uniform(size=(n, k)) < 0.5, -1.0, 1.0)
    p_mev = pt * np.cosh(eta) * 1e3
    q_over_p = charge / p_mev
    unc = degrade * rep
    valid = (
        c["valid"]
        & (c["pt"] >= _TRACK_PT_MIN)
        & (np.abs(eta) < 2.5)
        & (np.abs(d0) < 3.5)
        & (np.abs(z0st) < 3.0)
        & (hits["numberOfPixelHits"] >= 1)
        & (hits["numberOfPixelHits"] + hits["numberOfSCTHits"] >= 7)
    )

    values = {
        "d0": d0,
        "z0SinTheta": z0st,
        "dphi": dphi,
        "deta": c["deta"],
        "qOverP": q_over_p,
        "IP3D_signed_d0_significance": sd0,
        "IP3D_signed_z0_significance": sz0,
        "phiUncertainty": np.hypot(1e-4, 1.2e-3 / pt) * unc,
        "thetaUncertainty": np.hypot(5e-5, 1.0e-3 / pt) * sin_theta * unc,
        "qOverPUncertainty": np.abs(q_over_p) * np.hypot(0.01, 4e-4 * pt) * unc,
        **hits,
        "pt": pt * 1e3,
        "eta": eta,
        "phi": _wrap(jets["phi"][:, None] + dphi),
        "subjetIndex": np.zeros((n, k)),
        "ftagTruthOriginLabel": c["origin"],
        "ftagTruthVertexIndex": c["vertex"],
        "valid": valid,
    }
    # valid first, by descending signed d0 significance; keep the first n_tracks
    key = np.where(valid, -sd0, np.inf)
    order = np.argsort(key, axis=1, kind="stable")[:, :n_tracks]
    out = np.zeros((n, order.shape[1]), TRACK_DTYPE)
    valid_sorted = np.take_along_axis(valid, order, axis=1)
    for name in TRACK_DTYPE.names:
        col = np.take_along_axis(values[name], order, axis=1)
        if name == "valid":
            out[name] = col
        elif out.dtype[name].kind == "f":
            out[name] = np.where(valid_sorted, col, np.nan)
        else:
            out[name] = np.where(valid_sorted, col, -1)
    if order.shape[1] < n_tracks:  # fewer candidate slots than requested
        full = np.zeros((n, n_tracks), TRACK_DTYPE)
        full[:] = _padding(TRACK_DTYPE)
        full[:, : order.shape[1]] = out
        out = full
    return out, lxy


def _padding(dtype: np.dtype) -> np.ndarray:
    """One padded record: NaN floats, -1 integers, ``valid`` False."""
    rec = np.zeros((), dtype)
    for name in dtype.names:
        if name == "valid":
            rec[name] = False
        elif dtype[name].kind == "f":
            rec[name] = np.nan
        else:
            rec[name] = -1
    return rec


# ---------------------------------------------------------------------------------------
# electrons
# ---------------------------------------------------------------------------------------


def _make_electrons(
    rng: np.random.Generator, jets: dict[str, np.ndarray], n_electrons: int
) -> np.ndarray:
    """Structured ``electrons`` ``(n, n_electrons)``: soft electrons and fake candidates."""
    n = jets["pt"].shape[0]
    flav, pt, had_pt = jets["flav"], jets["pt"], jets["had_pt"]
    # candidate categories: 1 real semileptonic slot + hadron fakes + conversions + others
    p_real = np.select([flav == 0, flav == 1, flav == 3], [0.13, 0.07, 0.03], 0.0)
    real = rng.uniform(size=n) < p_real
    real_origin = np.select(
        [flav == 0, flav == 1],
        [np.where(rng.uniform(size=n) < 0.5, FROM_B, FROM_BC), FROM_C],
        FROM_TAU,
    )
    n_had = rng.poisson(0.25 + 0.8 * pt / 400.0)
    n_conv = rng.poisson(0.06, n)
    n_misc = rng.poisson(0.03, n)
    kmax = 1 + 4 + 2 + 1
    origin = np.full((n, kmax), PRIMARY, np.int32)
    cand = np.zeros((n, kmax), bool)
    cand[:, 0] = real
    origin[:, 0] = real_origin
    cand[:, 1:5] = _slot_mask(np.minimum(n_had, 4), 4)
    cand[:, 5:7] = _slot_mask(np.minimum(n_conv, 2), 2)
    origin[:, 5:7] = OTHER_SECONDARY
    cand[:, 7] = n_misc > 0
    origin[:, 7] = np.where(rng.uniform(size=n) < 0.5, PILEUP, FAKE)
    is_e = (np.arange(kmax) == 0)[None, :] | ((origin == OTHER_SECONDARY) & cand)
    is_hf = np.isin(origin, (FROM_B, FROM_BC, FROM_C, FROM_TAU)) & cand
    # hadron fakes in HF jets are often decay products (label them accordingly)
    hf_had = (np.arange(kmax) >= 1)[None, :] & (np.arange(kmax) < 5)[None, :]
    relabel = hf_had & (flav[:, None] <= 1) & (rng.uniform(size=(n, kmax)) < 0.4)
    origin = np.where(relabel, np.where(flav[:, None] == 0, FROM_B, FROM_C), origin)

    shape = (n, kmax)
    frac = np.where(is_hf, rng.beta(2.0, 3.0, shape), rng.beta(1.2, 6.0, shape))
    base = np.where(is_hf, had_pt[:, None], pt[:, None])
    e_pt = np.maximum(base * frac, 0.0) + 2.0 + rng.exponential(1.0, shape)  # GeV
    spread = np.where(is_hf, 0.5, 1.0) * (0.05 + 0.8 / np.sqrt(pt))[:, None]
    deta = np.clip(rng.normal(size=shape) * spread, -0.4, 0.4)
    dphi = np.clip(rng.normal(size=shape) * spread, -0.4, 0.4)
    dr = np.hypot(deta, dphi)
    eta = jets["eta"][:, None] + deta
    phi = _wrap(jets["phi"][:, None] + dphi)
    # how electron-like the candidate looks (HF electrons are non-isolated: overlap)
    s = np.where(is_e, rng.beta(5.0, 2.0, shape), rng.beta(1.5, 6.0, shape))

    def mix(had: float, ele: float, noise: float) -> np.ndarray:
        return had + (ele - had) * s + rng.normal(size=shape) * noise

    ptrel = e_pt * np.sin(np.clip(dr, 0.0, None)) + np.where(is_hf, rng.gamma(2.0, 0.4, shape), 0)
    displaced = np.isin(origin, (FROM_B, FROM_BC, FROM_C, FROM_TAU)) & cand  # after relabel
    lifetime = np.where(displaced, rng.exponential(3.0, shape), 0.0)
    conv = origin == OTHER_SECONDARY
    d0sig = rng.normal(size=shape) + lifetime + np.where(conv, rng.normal(0, 8, shape), 0.0)
    pix = np.where(conv, rng.binomial(2, 0.4, shape), 3 + rng.binomial(2, 0.4, shape))
    e_over_p = np.abs(mix(0.45, 1.0, 0.15)) + np.where(is_hf, rng.exponential(0.2, shape), 0.0)
    values = {
        "pt": e_pt * 1e3,
        "ptfrac": e_pt / pt[:, None],
        "ptrel": ptrel * 1e3,
        "dr": dr,
        "abs_eta": np.abs(eta),
        "eta": eta,
        "phi": phi,
        "ftag_et": e_pt * e_over_p * 1e3,
        "qOverP": np.where(rng.uniform(size=shape) < 0.5, -1.0, 1.0) / (e_pt * np.cosh(eta) * 1e3),
        "d0RelativeToBeamspotSignificance": d0sig,
        "ftag_z0AlongBeamspotSignificance": rng.normal(size=shape) * (1.0 + 0.5 * is_hf)
        + np.where(origin == PILEUP, rng.normal(0, 30, shape), 0.0),
        "ftag_ptVarCone30OverPt": np.abs((pt[:, None] - e_pt) / e_pt * rng.beta(2, 3, shape)),
        "numberOfPixelHits": pix.astype(np.float64),
        "numberOfSCTHitsInclDead": 8.0 + rng.binomial(2, 0.3, shape),
        "ftag_deltaPOverP": np.clip(mix(0.05, 0.35, 0.1), -0.2, 1.0),
        "eProbabilityHT": np.clip(mix(0.08, 0.75, 0.12), 0.0, 1.0),
        "deltaEta1": rng.normal(size=shape) * (0.012 - 0.009 * s),
        "deltaPhiRescaled2": rng.normal(size=shape) * (0.03 - 0.024 * s),
        "ftag_energyOverP": e_over_p,
        "Rhad": np.abs(mix(0.35, 0.01, 0.08)),
        "Rhad1": np.abs(mix(0.25, 0.005, 0.06)),
        "Eratio": np.clip(mix(0.45, 0.92, 0.08), 0.0, 1.0),
        "weta2": mix(0.0135, 0.0100, 0.0008),
        "Rphi": np.clip(mix(0.78, 0.95, 0.04), 0.0, 1.2),
        "Reta": np.clip(mix(0.78, 0.95, 0.03), 0.0, 1.2),
        "wtots1": np.abs(mix(3.6, 2.4, 0.4)),
        "f1": np.clip(mix(0.14, 0.27, 0.06), 0.0, 1.0),
        "f3": np.abs(mix(0.06, 0.008, 0.01)),
        "ftagTruthOriginLabel": origin,
    }
    cand &= np.abs(eta) < 2.47
    # sort candidates by descending pt, keep n_electrons
    key = np.where(cand, -e_pt, np.inf)
    order = np.argsort(key, axis=1, kind="stable")[:, :n_electrons]
    valid = np.take_along_axis(cand, order, axis=1)
    out = np.empty((n, n_electrons), ELECTRON_DTYPE)
    out[:] = _padding(ELECTRON_DTYPE)
    m = order.shape[1]
    for name in ELECTRON_DTYPE.names:
        if name == "valid":
            out[name][:, :m] = valid
            continue
        col = np.take_along_axis(values[name], order, axis=1)
        fill = np.nan if out.dtype[name].kind == "f" else -1
        out[name][:, :m] = np.where(valid, col, fill)
    return out


# ---------------------------------------------------------------------------------------
# jet-level summaries: soft muons, reference tagger
# ---------------------------------------------------------------------------------------


def _soft_muons(rng: np.random.Generator, jets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """GN2emu-style global soft-muon variables (0 for jets without a soft muon)."""
    n = jets["pt"].shape[0]
    flav, pt, had_pt = jets["flav"], jets["pt"], jets["had_pt"]
    p_real = np.select([flav == 0, flav == 1], [0.16, 0.08], 0.0)
    u = rng.uniform(size=n)
    real = u < p_real
    fake = (~real) & (rng.uniform(size=n) < 0.025)
    has = real | fake
    mu_pt = np.where(real, had_pt * rng.beta(2.0, 3.0, n), pt * rng.beta(1.2, 6.0, n)) + 3.0
    ptrel_mean = np.select([flav == 0, flav == 1], [1.2, 0.7], 0.45)
    ptrel = np.where(real, rng.gamma(2.5, ptrel_mean / 2.5, n), rng.gamma(1.5, 0.3, n))
    dr = np.clip(ptrel / mu_pt + rng.normal(0, 0.02, n), 0.0, 0.4)
    lifetime = np.select([real & (flav == 0), real & (flav == 1)], [4.0, 1.5], 0.0)
    values = {
        "softMuon_pt": mu_pt * 1e3,
        "softMuon_dR": np.abs(dr),
        "softMuon_qOverPratio": np.where(real, rng.normal(1.0, 0.05, n), rng.normal(1.0, 0.3, n)),
        "softMuon_momentumBalanceSignificance": np.where(
            real, np.abs(rng.normal(size=n)), rng.exponential(3.0, n)
        ),
        "softMuon_scatteringNeighbourSignificance": np.where(
            real, rng.normal(size=n), rng.normal(0.0, 3.0, n)
        ),
        "softMuon_pTrel": ptrel * 1e3,
        "softMuon_ip3dD0Significance": rng.normal(size=n) + rng.exponential(1.0, n) * lifetime,
    }
    return {k: np.where(has, v, 0.0) for k, v in values.items()}


def _ip_density(s: np.ndarray, disp_frac: float, disp_scale: float) -> np.ndarray:
    """Template density of a signed d0 significance: Gaussian core, wide tail, and an
    asymmetric exponential displaced component of fraction ``disp_frac``."""
    core = np.exp(-0.5 * s**2) / np.sqrt(2.0 * np.pi)
    tail = np.exp(-0.5 * (s / 5.0) ** 2) / (5.0 * np.sqrt(2.0 * np.pi))
    pos = np.exp(-np.clip(s, 0.0, None) / disp_scale) / disp_scale
    neg = np.exp(np.clip(s, None, 0.0) / 1.5) / 1.5
    disp = np.where(s >= 0.0, 0.85 * pos, 0.15 * neg)
    return (1.0 - disp_frac) * (0.97 * core + 0.03 * tail) + disp_frac * disp


def _reference_scores(
    rng: np.random.Generator, tracks: np.ndarray, muons: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """A simple, imperfect IP2D-like likelihood b/c/light score (plus the soft muon).

    Each valid track contributes ``log p_flav(sd0) / p_light(sd0)`` from fixed templates
    (:func:`_ip_density`), which ignore the track correlations, vertices and everything
    but the d0 significance; a little noise is added to the logits.
    """
    valid = tracks["valid"]
    sd0 = np.clip(np.where(valid, tracks["IP3D_signed_d0_significance"], 0.0), -30.0, 60.0)
    light = _ip_density(sd0, 0.0, 1.0)
    llr_b = np.where(valid, np.log(_ip_density(sd0, 0.35, 8.0) / light), 0.0).sum(axis=1)
    llr_c = np.where(valid, np.log(_ip_density(sd0, 0.2, 4.0) / light), 0.0).sum(axis=1)
    has_mu = muons["softMuon_pt"] > 0
    mu_term = has_mu * np.clip(muons["softMuon_pTrel"] / 1e3 - 0.6, -1.0, 2.0)
    n = sd0.shape[0]
    logits = np.stack([llr_b + 1.0 * mu_term, llr_c + 0.4 * mu_term, np.zeros(n)], axis=1)
    logits += np.log([0.35, 0.2, 0.45]) + rng.normal(0.0, 0.3, (n, 3))
    logits = np.clip(logits - logits.max(axis=1, keepdims=True), -12.0, 0.0)  # no zeros
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return {"ref_pb": p[:, 0], "ref_pc": p[:, 1], "ref_pu": p[:, 2]}


# ---------------------------------------------------------------------------------------
# one block of jets
# ---------------------------------------------------------------------------------------


def generate_block(
    rng: np.random.Generator,
    n_jets: int,
    n_tracks: int = 40,
    n_electrons: int = 10,
    difficulty: float = 1.0,
) -> dict[str, np.ndarray]:
    """Generate one block of jets in memory.

    Parameters
    ----------
    rng
        The random generator (consumed).
    n_jets
        Number of jets ``N``.
    n_tracks, n_electrons
        Constituent slots ``T`` and ``M``.
    difficulty
        Impact-parameter resolution and tail-fraction multiplier (see the module doc).

    Returns
    -------
    dict[str, np.ndarray]
        ``{"jets": (N,), "tracks": (N, T), "electrons": (N, M)}`` structured arrays with the
        dtypes :data:`JET_DTYPE`, :data:`TRACK_DTYPE`, :data:`ELECTRON_DTYPE`.
    """
    kin = _jet_kinematics(rng, n_jets)
    tracks, lxy = _make_tracks(rng, kin, n_tracks, difficulty)
    electrons = _make_electrons(rng, kin, n_electrons)
    muons = _soft_muons(rng, kin)
    ref = _reference_scores(rng, tracks, muons)

    flav = kin["flav"]
    pt_mev = kin["pt"] * 1e3
    mass_param = np.where(flav == 0, _pick(rng, MASS_PARAM_VALUES, None, n_jets), -1.0)
    bkg_mass = kin["pt"] * rng.gamma(4.0, 0.04, n_jets)
    sig_mass = mass_param * (1.0 + 0.08 * rng.normal(size=n_jets))
    jets = np.zeros(n_jets, JET_DTYPE)
    jets["pt"] = pt_mev
    jets["eta"] = kin["eta"]
    jets["pt_btagJes"] = pt_mev * (1.0 + 0.04 * rng.normal(size=n_jets))
    jets["eta_btagJes"] = kin["eta"] + 0.003 * rng.normal(size=n_jets)
    jets["mass"] = np.abs(np.where(flav == 0, sig_mass, bkg_mass)) * 1e3
    jets["flavour_label"] = flav
    jets["HadronConeExclTruthLabelID"] = np.asarray(HADRON_LABEL_IDS)[flav]
    jets["HadronConeExclTruthLabelPt"] = np.where(flav == 2, np.nan, kin["had_pt"] * 1e3)
    jets["HadronConeExclTruthLabelLxy"] = lxy
    jets["mass_param"] = mass_param
    jets["n_tracks"] = tracks["valid"].sum(axis=1)
    for name, col in {**muons, **ref}.items():
        jets[name] = col
    return {"jets": jets, "tracks": tracks, "electrons": electrons}


def _check_sizes(n_tracks: int, n_electrons: int, block_size: int, difficulty: float = 1.0) -> None:
    if not (np.isfinite(difficulty) and difficulty > 0):
        raise ValueError(f"difficulty must be a finite number > 0, got {difficulty}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if n_tracks < 1 or n_electrons < 1:
        raise ValueError(
            f"n_tracks and n_electrons must be >= 1, got n_tracks={n_tracks}, "
            f"n_electrons={n_electrons}"
        )


def _blocks(
    n_jets: int,
    seed: int,
    split: str,
    n_tracks: int,
    n_electrons: int,
    block_size: int,
    difficulty: float = 1.0,
):
    """Yield ``(block, index)`` for consecutive blocks, each with its own seeded generator."""
    _check_sizes(n_tracks, n_electrons, block_size, difficulty)
    for i, start in enumerate(range(0, n_jets, block_size)):
        ss = np.random.SeedSequence(entropy=seed, spawn_key=(_split_seed(split), i))
        rng = np.random.default_rng(ss)
        size = min(block_size, n_jets - start)
        yield generate_block(rng, size, n_tracks, n_electrons, difficulty), i


# ---------------------------------------------------------------------------------------
# statistics for norm_dict / class_dict
# ---------------------------------------------------------------------------------------


class _Stats:
    """Running moments per (dataset, variable) and label counts of the jets written.

    The moments are :class:`saltx.data.norm.RunningStats` over the valid constituents'
    finite values, the weights :func:`saltx.data.class_weights.class_weights`: the rules
    ``python -m saltx.data.norm`` and ``python -m saltx.data.class_weights`` apply to a file.
    """

    def __init__(self) -> None:
        self.moments = {ds: RunningStats(len(names)) for ds, names in NORM_VARS.items()}
        self.counts: dict[tuple[str, str], np.ndarray] = {}

    def update(self, block: dict[str, np.ndarray]) -> None:
        for ds, names in NORM_VARS.items():
            arr = block[ds]
            sel = arr[arr["valid"]] if "valid" in arr.dtype.names else arr
            x = np.stack([sel[name].astype(np.float64) for name in names], axis=-1)
            self.moments[ds].update(np.where(np.isfinite(x), x, np.nan))
        self._count("jets", "flavour_label", block["jets"]["flavour_label"], len(FLAVOURS))
        ids = np.searchsorted(HADRON_LABEL_IDS_SORTED, block["jets"]["HadronConeExclTruthLabelID"])
        self._count("jets", "HadronConeExclTruthLabelID", ids, len(HADRON_LABEL_IDS_SORTED))
        for ds in ("tracks", "electrons"):
            arr = block[ds]
            self._count(ds, "ftagTruthOriginLabel", arr["ftagTruthOriginLabel"][arr["valid"]], 8)

    def _count(self, ds: str, label: str, values: np.ndarray, k: int) -> None:
        c = np.bincount(np.asarray(values, np.int64), minlength=k)[:k]
        self.counts[(ds, label)] = self.counts.get((ds, label), 0) + c

    def norm_dict(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{dataset: {var: {mean, std}}}``; mean 0 and std 1 where undefined or zero."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for ds, names in NORM_VARS.items():
            stats = self.moments[ds]
            out[ds] = {}
            for name, mean, std in zip(names, stats.mean, stats.std, strict=True):
                std = float(std) if np.isfinite(std) and std > 0.0 else 1.0
                out[ds][name] = {"mean": float(mean) if np.isfinite(mean) else 0.0, "std": std}
        return out

    def class_dict(self) -> dict[str, dict[str, list[float]]]:
        """``{dataset: {label: [weight per class index]}}``."""
        out: dict[str, dict[str, list[float]]] = {}
        for (ds, label), counts in self.counts.items():
            out.setdefault(ds, {})[label] = class_weights(dict(enumerate(counts)))
        return out


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------


def write_split(
    path: str | Path,
    n_jets: int,
    seed: int = 0,
    split: str = "train",
    n_tracks: int = 40,
    n_electrons: int = 10,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    block_size: int = DEFAULT_BLOCK_SIZE,
    compression: str | None = "lzf",
    difficulty: float = 1.0,
) -> _Stats:
    """Write one split file in the UPP layout, appending chunks to resizable datasets.

    Parameters
    ----------
    path
        Output ``.h5`` file (overwritten).
    n_jets
        Number of jets ``N``.
    seed, split
        The random stream is fixed by ``(seed, split, block index)``.
    n_tracks, n_electrons
        Slots ``T`` and ``M`` of the ``tracks`` ``(N, T)`` and ``electrons`` ``(N, M)``.
    chunk_size
        Jets held in memory before one write (rounded up to whole blocks); does not change
        the output.
    block_size
        Jets per independently seeded block; changing it changes the random stream.
    compression
        h5py compression filter of the datasets (``"lzf"`` like UPP, or None).
    difficulty
        Impact-parameter resolution and tail-fraction multiplier (see the module doc);
        recorded in the file's ``config`` attribute when not 1.

    Returns
    -------
    _Stats
        Running statistics of the split (for norm and class dicts).
    """
    if n_jets < 1:
        raise ValueError(f"n_jets must be >= 1 for split {split!r}, got {n_jets}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    _check_sizes(n_tracks, n_electrons, block_size, difficulty)
    blocks_per_chunk = max(1, -(-chunk_size // block_size))
    stats = _Stats()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = min(n_jets, 256)
    with h5py.File(path, "w") as f:
        specs = {
            "jets": ((), JET_DTYPE),
            "tracks": ((n_tracks,), TRACK_DTYPE),
            "electrons": ((n_electrons,), ELECTRON_DTYPE),
        }
        dsets = {
            name: f.create_dataset(
                name,
                shape=(0, *tail),
                maxshape=(None, *tail),
                dtype=dt,
                chunks=(rows, *tail),
                compression=compression,
            )
            for name, (tail, dt) in specs.items()
        }
        buffer: list[dict[str, np.ndarray]] = []
        written = 0

        def flush() -> None:
            nonlocal written
            if not buffer:
                return
            chunk = {k: np.concatenate([b[k] for b in buffer]) for k in buffer[0]}
            m = chunk["jets"].shape[0]
            for name, ds in dsets.items():
                ds.resize(written + m, axis=0)
                ds[written : written + m] = chunk[name]
            written += m
            buffer.clear()

        blocks = _blocks(n_jets, seed, split, n_tracks, n_electrons, block_size, difficulty)
        for block, _ in blocks:
            stats.update(block)
            buffer.append(block)
            if len(buffer) >= blocks_per_chunk:
                flush()
        flush()

        counts = stats.counts[("jets", "flavour_label")]
        dsets["jets"].attrs["flavour_label"] = list(FLAVOURS)
        f.attrs["unique_jets"] = n_jets
        f.attrs["jet_counts"] = json.dumps({k: int(c) for k, c in zip(FLAVOURS, counts)})
        config = {
            "generator": "saltx.data.synthetic",
            "split": split,
            "seed": seed,
            "num_jets": n_jets,
            "num_tracks": n_tracks,
            "num_electrons": n_electrons,
            "block_size": block_size,
            "flavours": list(FLAVOURS),
            "flavour_fractions": list(FLAVOUR_FRACTIONS),
            "units": {"momentum": "MeV", "length": "mm"},
        }
        if difficulty != 1.0:  # the default files stay byte-for-byte as before
            config["difficulty"] = float(difficulty)
        f.attrs["config"] = json.dumps(config)
    return stats


def split_counts(
    n_jets: int | Mapping[str, int],
    splits: Sequence[str] = ("train", "val", "test"),
    split_fractions: Sequence[float] | None = None,
) -> dict[str, int]:
    """Number of jets per split.

    ``n_jets`` is either a total, divided by ``split_fractions`` (default: weight 8 for
    ``"train"`` and 1 for every other split, i.e. 0.8/0.1/0.1), or a mapping split -> count.
    """
    if isinstance(n_jets, Mapping):
        missing = [s for s in splits if s not in n_jets]
        if missing:
            raise ValueError(f"n_jets mapping {dict(n_jets)} lacks the splits {missing}")
        counts = {s: int(n_jets[s]) for s in splits}
    else:
        if split_fractions is None:
            weights = [8.0 if s == "train" else 1.0 for s in splits]
            split_fractions = [w / sum(weights) for w in weights]
        if len(split_fractions) != len(splits):
            raise ValueError(
                f"split_fractions {list(split_fractions)} must have one entry per split "
                f"{list(splits)}"
            )
        total = float(sum(split_fractions))
        rest = {s: round(n_jets * f / total) for s, f in zip(splits[1:], split_fractions[1:])}
        counts = {splits[0]: int(n_jets) - sum(rest.values()), **rest}
    bad = {s: c for s, c in counts.items() if c < 1}
    if bad:
        raise ValueError(f"every split needs >= 1 jet; got {bad} from n_jets={n_jets}")
    return counts


def write_dataset(
    out_dir: str | Path,
    n_jets: int | Mapping[str, int],
    seed: int = 0,
    n_tracks: int = 40,
    n_electrons: int = 10,
    splits: Sequence[str] = ("train", "val", "test"),
    split_fractions: Sequence[float] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    block_size: int = DEFAULT_BLOCK_SIZE,
    compression: str | None = "lzf",
    difficulty: float = 1.0,
) -> dict[str, Path]:
    """Write ``<split>.h5`` for every split plus ``norm_dict.yaml`` and ``class_dict.yaml``.

    Parameters
    ----------
    out_dir
        Output directory (created).
    n_jets
        Total jets, divided by ``split_fractions`` (default 0.8/0.1/0.1 for
        train/val/test), or a mapping ``{split: n}``.
    seed
        Seed; each split has its own stream, independent of the other splits.
    n_tracks, n_electrons
        Constituent slots ``T`` (tracks) and ``M`` (electrons).
    splits, split_fractions
        Split names (file stems) and their fractions of ``n_jets``.
    chunk_size, block_size, compression, difficulty
        See :func:`write_split`.

    Returns
    -------
    dict[str, Path]
        ``{split: path}`` for every split, plus ``"norm_dict"`` and ``"class_dict"``. The
        dicts are computed on the ``"train"`` split (the first split when there is none).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = split_counts(n_jets, splits, split_fractions)
    paths: dict[str, Path] = {}
    stats_by_split = {}
    for split, n in counts.items():
        paths[split] = out_dir / f"{split}.h5"
        stats_by_split[split] = write_split(
            paths[split],
            n,
            seed,
            split,
            n_tracks,
            n_electrons,
            chunk_size,
            block_size,
            compression,
            difficulty,
        )
    stats = stats_by_split.get("train", stats_by_split[splits[0]])
    paths["norm_dict"] = out_dir / "norm_dict.yaml"
    paths["class_dict"] = out_dir / "class_dict.yaml"
    paths["norm_dict"].write_text(yaml.safe_dump(stats.norm_dict(), sort_keys=False))
    paths["class_dict"].write_text(yaml.safe_dump(stats.class_dict(), sort_keys=False))
    return paths


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """``python -m saltx.data.synthetic --out DIR --n-jets N [--seed S] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m saltx.data.synthetic",
        description="Write a synthetic Salt/UPP-style dataset (train/val/test h5 + dicts).",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--n-jets", required=True, type=int, help="total number of jets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-tracks", type=int, default=40, help="track slots per jet")
    parser.add_argument("--n-electrons", type=int, default=10, help="electron slots per jet")
    parser.add_argument("--n-val", type=int, default=None, help="val jets (default 10%%)")
    parser.add_argument("--n-test", type=int, default=None, help="test jets (default 10%%)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument(
        "--difficulty",
        type=float,
        default=1.0,
        help="impact-parameter resolution and tail-fraction multiplier (default 1)",
    )
    args = parser.parse_args(argv)

    n: int | dict[str, int] = args.n_jets
    if args.n_val is not None or args.n_test is not None:
        default = split_counts(args.n_jets)
        n_val = default["val"] if args.n_val is None else args.n_val
        n_test = default["test"] if args.n_test is None else args.n_test
        n = {"train": args.n_jets - n_val - n_test, "val": n_val, "test": n_test}
    start = time.perf_counter()
    paths = write_dataset(
        args.out,
        n,
        seed=args.seed,
        n_tracks=args.n_tracks,
        n_electrons=args.n_electrons,
        chunk_size=args.chunk_size,
        difficulty=args.difficulty,
    )
    dt = time.perf_counter() - start
    counts = split_counts(n)
    parts = ", ".join(f"{s} {c}" for s, c in counts.items())
    total = sum(counts.values())
    print(
        f"saltx.data.synthetic: wrote {total} jets ({parts}) to {args.out} "
        f"in {dt:.1f} s ({total / max(dt, 1e-9):.0f} jets/s)"
    )
    return paths


if __name__ == "__main__":
    main()
