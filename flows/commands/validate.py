"""``rerefine validate MODEL``: MolProbity-class validation of one model.

Ramachandran and rotamer classes (Top8000 reference data, Williams et al. (2018) Protein Sci.
27:293-315, CC-BY 4.0), C-beta deviations, cis/twisted peptides, chirality inversions, the
all-atom clashscore (hydrogens added from the monomer library) and heavy-atom / all-atom bond
and angle RMSDs (:mod:`rerefine.refine.validation`).
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("validate", help="MolProbity-class validation of a model (Ramachandran, rotamers, "
                                        "C-beta, peptides, clashscore, RMSDs)")
    p.add_argument("model", help="model file (mmCIF or PDB, optionally .gz)")
    p.add_argument("--json", metavar="OUT|-", help="write the summary and per-residue lists as JSON")
    p.add_argument("--monlib", default=None,
                   help="CCP4 monomer library folder (default: settings RR_MONOMER_LIB / CLIBD_MON)")
    p.add_argument("--top8000", default=None,
                   help="Top8000 reference data folder (default: settings RR_TOP8000)")
    p.add_argument("--keep-hydrogens", action="store_true",
                   help="use the model's own hydrogens instead of placing them from the monomer library")
    p.set_defaults(func=run)


def validate_file(model_path, *, monlib=None, top8000=None, add_hydrogens=True) -> dict:
    """Read ``model_path`` and validate it; the report as a dict (summary keys at the top level)."""
    from rerefine.common.errors import InputError
    from rerefine.refine import modelio
    from rerefine.refine.validation import validate

    if monlib is None:
        raise InputError("no monomer library: set RR_MONOMER_LIB or CLIBD_MON, or give --monlib")
    st = modelio.read_model(model_path)
    rep = validate(st, monlib, add_hydrogens=add_hydrogens, top8000_dir=top8000)
    return {"model": str(model_path), **rep.to_dict()}


def _fmt(x, fmt):
    return "n/a" if x is None else format(x, fmt)


def run(args, settings) -> int:
    from rerefine.flows.cli import emit_json
    from rerefine.refine.validation import CREDIT

    out = validate_file(args.model, monlib=args.monlib or settings.monomer_library,
                        top8000=args.top8000 or settings.top8000_dir, add_hydrogens=not args.keep_hydrogens)
    if args.json != "-":
        print(f"validation of {out['model']} ({out['n_rama']} residues with phi/psi, "
              f"{out['n_rotamer']} scored rotamers, {out['n_atoms_clash']} atoms with H)")
        print(f"  Ramachandran favoured {_fmt(out['rama_favored_pct'], '.2f')} %, outliers {out['rama_outliers']} "
              f"({_fmt(out['rama_outliers_pct'], '.2f')} %)")
        print(f"  rotamer outliers      {out['rotamer_outliers']} ({_fmt(out['rotamer_outliers_pct'], '.2f')} %; "
              "ARG/LYS not scored)")
        print(f"  C-beta outliers       {out['cbeta_outliers']}")
        print(f"  clashscore            {_fmt(out['clashscore'], '.2f')} ({out['n_clashes']} clashes)")
        print(f"  cis / twisted peptides {out['cis_peptides']} / {out['twisted_peptides']}; "
              f"chirality inversions {out['chirality_inversions']}")
        print(f"  bond RMSD {_fmt(out['bond_rmsd_heavy'], '.4f')} Å, angle RMSD {_fmt(out['angle_rmsd_heavy'], '.2f')}° "
              f"(heavy atoms); all atoms {_fmt(out['bond_rmsd'], '.4f')} Å, {_fmt(out['angle_rmsd'], '.2f')}°")
        bad = [r for r in out["per_residue"] if r["rama"] == "outlier" or r["rotamer"] == "outlier"
               or (r["cbeta_dev"] or 0) >= 0.25 or r["peptide"] in ("cis", "twisted")]
        for r in bad:
            what = []
            if r["rama"] == "outlier":
                what.append(f"Ramachandran outlier ({r['rama_category']}, phi {r['phi']:.0f} psi {r['psi']:.0f})")
            if r["rotamer"] == "outlier":
                what.append("rotamer outlier")
            if (r["cbeta_dev"] or 0) >= 0.25:
                what.append(f"C-beta deviation {r['cbeta_dev']:.2f} Å")
            if r["peptide"] in ("cis", "twisted"):
                what.append(f"{r['peptide']} peptide (omega {r['omega']:.0f})")
            print(f"  {r['chain']}:{r['seq']}{r['icode']} {r['resname']}: {'; '.join(what)}")
        for c in out["clashes"][:20]:
            print(f"  clash {c['a']} - {c['b']}: {c['overlap']:.2f} Å")
        if len(out["clashes"]) > 20:
            print(f"  ... {len(out['clashes']) - 20} more clashes (--json for all)")
        for w in out["warnings"]:
            print(f"  warning: {w}")
        print(f"  {CREDIT}")
    emit_json(out, args.json)
    return 0
