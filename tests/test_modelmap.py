"""Model maps: exactness against a direct structure-factor sum, and the model-parameter effects."""

from __future__ import annotations

from dataclasses import replace

import gemmi
import numpy as np
import pytest

from rerefine.refine import modelio, modelmap
from rerefine.common.errors import InputError

from boxes import blank_box  # noqa: E402  (tests/ is on sys.path under pytest)


def _fragment(pairs, n_res=6, aniso=True):
    """First residues of the real 5ME2 model, one atom with ANISOU, one with zero occupancy."""
    st = modelio.read_model(pairs["emd_3488_5me2"][0])
    model = st[0]
    ch = model[0]
    while len(ch) > n_res:
        del ch[len(ch) - 1]
    while len(model) > 1:
        del model[len(model) - 1]
    if aniso:
        at = ch[2][0]
        at.aniso = gemmi.SMat33f(0.60, 0.10, 0.20, 0.02, 0.0, 0.01)
    st.setup_entities()
    return st


def _direct_map(st, dmap, d_min, padding):
    """rho on the box grid from a direct sum over Miller indices of the padded cell."""
    p, npad, _, cell = modelmap._padded_geometry(dmap, d_min, padding)
    h = dmap.voxel_size
    corner = dmap.origin - p * h
    kx = np.fft.fftfreq(npad[0], 1.0 / npad[0])
    ky = np.fft.fftfreq(npad[1], 1.0 / npad[1])
    kz = np.fft.fftfreq(npad[2], 1.0 / npad[2])
    hh = np.stack(np.meshgrid(kx, ky, kz, indexing="ij"), -1).reshape(-1, 3)
    svec = hh / cell
    s2 = (svec ** 2).sum(1)
    keep = s2 < 1 / d_min ** 2
    hh, svec, s2 = hh[keep], svec[keep], s2[keep]
    F = np.zeros(len(hh), complex)
    for cra in st[0].all():
        a = cra.atom
        f0 = np.array([a.element.c4322.calculate_sf(x / 4) for x in s2])
        if a.aniso.nonzero():
            u = np.array(a.aniso.as_mat33().tolist())
            dw = np.exp(-2 * np.pi ** 2 * np.einsum("ni,ij,nj->n", svec, u, svec))
        else:
            dw = np.exp(-a.b_iso * s2 / 4)
        x = np.array(a.pos.tolist()) - corner
        F += a.occ * f0 * dw * np.exp(2j * np.pi * (svec @ x))
    full = np.zeros(tuple(npad), complex)
    idx = np.mod(hh.astype(int), npad)
    full[idx[:, 0], idx[:, 1], idx[:, 2]] = F
    rho = np.fft.ifftn(np.conj(full)).real * np.prod(npad) / np.prod(cell)
    n = dmap.shape
    return rho[p[0]:p[0] + n[0], p[1]:p[1] + n[1], p[2]:p[2] + n[2]]


@pytest.mark.parametrize("voxel,d_min", [(1.0, 3.0), (0.65, 1.75)])
def test_model_map_equals_direct_fourier_sum(pairs, voxel, d_min):
    # (0.65, 1.75) goes through the oversampled path (voxel > d_min/3).
    st = _fragment(pairs)
    xyz = modelio.atom_positions(st)
    lo = xyz.min(0) - 4.0
    shape = np.ceil((xyz.max(0) + 4.0 - lo) / voxel).astype(int)
    box = blank_box(lo, shape, voxel)
    ours = modelmap.model_map(st, box, d_min, padding=8.0).data.astype(float)
    ref = _direct_map(st, box, d_min, 8.0)
    cc = np.corrcoef(ours.ravel(), ref.ravel())[0, 1]
    assert cc > 0.99999
    scale = np.dot(ours.ravel(), ref.ravel()) / np.dot(ref.ravel(), ref.ravel())
    rel = np.abs(ours - scale * ref).max() / np.abs(ref).max()
    assert rel < 2e-3
    # gemmi's E-table density is electrons-like per Å^3 up to a constant factor; report it.
    assert scale > 0


def test_charge_hydrogens_occupancy_aniso(pairs):
    st = _fragment(pairs, aniso=False)
    xyz = modelio.atom_positions(st)
    lo = xyz.min(0) - 4.0
    box = blank_box(lo, np.ceil((xyz.max(0) + 4.0 - lo) / 0.8).astype(int), 0.8)
    base = modelmap.model_map(st, box, 2.5).data
    # formal charge: same form factor as the neutral element
    st_q = st.clone()
    st_q[0][0][0][0].charge = -1
    assert np.array_equal(modelmap.model_map(st_q, box, 2.5).data, base)
    # zero occupancy: the atom contributes nothing = as if removed
    st_o = st.clone()
    st_o[0][0][1][3].occ = 0.0
    st_r = st.clone()
    del st_r[0][0][1][3]
    np.testing.assert_allclose(modelmap.model_map(st_o, box, 2.5).data,
                               modelmap.model_map(st_r, box, 2.5).data, atol=1e-6 * np.abs(base).max())
    # hydrogens present in the model contribute
    st_h = st.clone()
    h = gemmi.Atom()
    h.name, h.element, h.occ, h.b_iso = "H", gemmi.Element("H"), 1.0, 20.0
    p = st_h[0][0][0][1].pos
    h.pos = gemmi.Position(p.x + 1.0, p.y, p.z)
    st_h[0][0][0].add_atom(h)
    diff = modelmap.model_map(st_h, box, 2.5).data - base
    assert diff.max() > 0.01 * base.max()
    # anisotropic U elongated along x spreads density along x
    st_a = st.clone()
    one = st_a[0][0][0]
    while len(one) > 1:
        del one[len(one) - 1]
    for r in range(len(st_a[0][0]) - 1, 0, -1):
        del st_a[0][0][r]
    iso = modelmap.model_map(st_a, box, 2.5).data.astype(float)
    st_a[0][0][0][0].aniso = gemmi.SMat33f(1.0, 0.05, 0.05, 0.0, 0.0, 0.0)
    ani = modelmap.model_map(st_a, box, 2.5).data.astype(float)
    g = box.grid_coordinates(np.array([st_a[0][0][0][0].pos.tolist()]))[0]
    idx = np.indices(ani.shape).reshape(3, -1).T - g

    near = (idx ** 2).sum(1) * 0.8 ** 2 < 3.0 ** 2  # ripples far away do not count

    def spread(m, ax):
        w = np.clip(m.ravel(), 0, None) * near
        return (w * idx[:, ax] ** 2).sum() / w.sum()

    assert spread(ani, 0) > 1.5 * spread(ani, 1)
    assert spread(iso, 0) == pytest.approx(spread(iso, 1), rel=0.1)


def test_bad_inputs(pairs):
    st = _fragment(pairs, aniso=False)
    box = blank_box((0, 0, 0), (20, 20, 20), 1.0)
    for bad in (0.0, -2.0, None):
        with pytest.raises(InputError, match="resolution"):
            modelmap.model_map(st, box, bad)
    st_x = st.clone()
    st_x[0][0][0][0].element = gemmi.Element("X")
    with pytest.raises(InputError, match="unknown element"):
        modelmap.model_map(st_x, box, 3.0)


def test_padding_removes_wraparound(pairs):
    """An atom at the box edge must not put density at the opposite edge."""
    st = _fragment(pairs, aniso=False)
    atom = st[0][0][0][0]
    p = atom.pos
    box = blank_box((p.x - 0.5, p.y - 10, p.z - 10), (30, 30, 30), 0.7)
    single = st.clone()
    for r in range(len(single[0][0]) - 1, 0, -1):
        del single[0][0][r]
    res = single[0][0][0]
    while len(res) > 1:
        del res[len(res) - 1]
    m = modelmap.model_map(single, box, 2.0).data
    assert np.abs(m[-3:]).max() < 0.01 * m.max()
    assert replace(box, data=m).shape == box.shape
