#!/usr/bin/env python3
"""Compare two logits files in the run.c oracle format.

Each line of a file is
    pos P token T: v0 v1 ... v{vocab-1}

Usage:
    python3 tests/ref/compare_logits.py A.txt B.txt [--atol X] [--rtol Y] [--positions 0-31]

An element passes when |a - b| <= atol + rtol * |b| (B is the reference side).
Prints max abs / max rel difference with the worst position and index, and
checks that the argmax of every position agrees.  An argmax disagreement is
accepted only when it is a tie within tolerance in both files (the two
candidate ids differ by no more than the tolerance in A and in B), unless
--strict-argmax is given.

Exit status: 0 all within tolerance; 1 a difference beyond tolerance, an
argmax disagreement, or differing positions / tokens / vocab sizes; 2 usage
or parse error.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


class ParseError(Exception):
    pass


def parse_logits_file(path: str) -> dict:
    """Return {pos: (token, np.ndarray float64)} in file order."""
    rows = {}
    with open(path) as fp:
        for lineno, line in enumerate(fp, 1):
            line = line.strip()
            if not line:
                continue
            head, sep, rest = line.partition(":")
            words = head.split()
            if not sep or len(words) != 4 or words[0] != "pos" or words[2] != "token":
                raise ParseError(f"{path}:{lineno}: expected 'pos P token T: values...'")
            try:
                pos, tok = int(words[1]), int(words[3])
                vals = np.array([float(v) for v in rest.split()], dtype=np.float64)
            except ValueError as e:
                raise ParseError(f"{path}:{lineno}: {e}")
            if vals.size == 0:
                raise ParseError(f"{path}:{lineno}: no values")
            if pos in rows:
                raise ParseError(f"{path}:{lineno}: position {pos} appears twice")
            rows[pos] = (tok, vals)
    if not rows:
        raise ParseError(f"{path}: no logits lines")
    return rows


def parse_positions(spec: str) -> set:
    out = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            lo, hi = int(lo), int(hi)
            if hi < lo:
                raise ValueError(f"empty range {part!r}")
            out.update(range(lo, hi + 1))
        else:
            out.add(int(part))
    if not out:
        raise ValueError(f"no positions in {spec!r}")
    return out


def compare(a: dict, b: dict, atol: float, rtol: float, positions: set | None = None,
            strict_argmax: bool = False, out=sys.stdout, names=("A", "B")) -> bool:
    """Print the comparison; return True when everything agrees within tolerance."""
    ok = True
    na, nb = names
    pa, pb = set(a), set(b)
    if positions is not None:
        missing_a, missing_b = sorted(positions - pa), sorted(positions - pb)
        if missing_a:
            print(f"FAIL: positions missing from {na}: {_fmt_list(missing_a)}", file=out)
            ok = False
        if missing_b:
            print(f"FAIL: positions missing from {nb}: {_fmt_list(missing_b)}", file=out)
            ok = False
        common = sorted(positions & pa & pb)
    else:
        if pa != pb:
            print(f"FAIL: position sets differ: only in {na}: {_fmt_list(sorted(pa - pb))}; "
                  f"only in {nb}: {_fmt_list(sorted(pb - pa))}", file=out)
            ok = False
        common = sorted(pa & pb)
    if not common:
        print("FAIL: no positions to compare", file=out)
        return False

    max_abs, max_abs_at = -1.0, None
    max_rel, max_rel_at = -1.0, None
    worst_excess, worst_at = 0.0, None     # largest |a-b| - (atol + rtol|b|)
    n_bad = 0
    for p in common:
        ta, va = a[p]
        tb, vb = b[p]
        if ta != tb:
            print(f"FAIL: position {p}: token {ta} in {na} but {tb} in {nb}", file=out)
            ok = False
        if va.size != vb.size:
            print(f"FAIL: position {p}: {va.size} values in {na} but {vb.size} in {nb}", file=out)
            ok = False
            continue
        if not (np.all(np.isfinite(va)) and np.all(np.isfinite(vb))):
            print(f"FAIL: position {p}: non-finite values", file=out)
            ok = False
            continue
        d = np.abs(va - vb)
        i = int(np.argmax(d))
        if d[i] > max_abs:
            max_abs, max_abs_at = float(d[i]), (p, i, va[i], vb[i])
        denom = np.maximum(np.abs(va), np.abs(vb))
        rel = np.where(denom > 0, d / np.where(denom > 0, denom, 1.0), 0.0)
        j = int(np.argmax(rel))
        if rel[j] > max_rel:
            max_rel, max_rel_at = float(rel[j]), (p, j, va[j], vb[j])
        tol = atol + rtol * np.abs(vb)
        excess = d - tol
        bad = excess > 0
        if bad.any():
            n_bad += int(bad.sum())
            k = int(np.argmax(excess))
            if worst_at is None or excess[k] > worst_excess:
                worst_excess, worst_at = float(excess[k]), (p, k, va[k], vb[k])
        # argmax agreement (np.argmax: ties -> lowest index)
        ia, ib = int(np.argmax(va)), int(np.argmax(vb))
        if ia != ib:
            tie_a = va[ia] - va[ib] <= atol + rtol * abs(va[ia])
            tie_b = vb[ib] - vb[ia] <= atol + rtol * abs(vb[ib])
            if tie_a and tie_b and not strict_argmax:
                print(f"note: position {p}: argmax {ia} in {na} vs {ib} in {nb} "
                      f"(a tie within tolerance; accepted)", file=out)
            else:
                print(f"FAIL: position {p}: argmax {ia} ({va[ia]:e}) in {na} vs {ib} ({vb[ib]:e}) in {nb}",
                      file=out)
                ok = False

    print(f"compared {len(common)} positions ({_fmt_list(common)}), vocab {a[common[0]][1].size}", file=out)
    if max_abs_at is not None:  # None: every position was refused above (non-finite, sizes)
        p, i, x, y = max_abs_at
        print(f"max abs diff {max_abs:.6e} at pos {p} index {i} ({na} {x:e}, {nb} {y:e})", file=out)
    if max_rel_at is not None:
        p, i, x, y = max_rel_at
        print(f"max rel diff {max_rel:.6e} at pos {p} index {i} ({na} {x:e}, {nb} {y:e})", file=out)
    if n_bad:
        p, i, x, y = worst_at
        print(f"FAIL: {n_bad} values beyond atol {atol:g} + rtol {rtol:g}*|{nb}|; worst at pos {p} "
              f"index {i} ({na} {x:e}, {nb} {y:e})", file=out)
        ok = False
    print("OK" if ok else "MISMATCH", file=out)
    return ok


def _fmt_list(xs) -> str:
    """Compact '0-3,7' rendering of a sorted int list."""
    xs = list(xs)
    if not xs:
        return "none"
    parts, lo, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        parts.append(str(lo) if lo == prev else f"{lo}-{prev}")
        if x is not None:
            lo = prev = x
    return ",".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="compare two 'pos P token T: logits...' files")
    ap.add_argument("a", help="logits file under test (e.g. shoal --logits-out)")
    ap.add_argument("b", help="reference logits file (e.g. reference.py --logits-out)")
    ap.add_argument("--atol", type=float, default=1e-3, help="absolute tolerance (default 1e-3)")
    ap.add_argument("--rtol", type=float, default=0.0, help="relative tolerance w.r.t. |B| (default 0)")
    ap.add_argument("--positions", help="positions to compare, e.g. 0-31 or 0-3,8 (default: all; "
                                        "then both files must hold the same positions)")
    ap.add_argument("--strict-argmax", action="store_true",
                    help="fail on any argmax disagreement, even a tie within tolerance")
    args = ap.parse_args(argv)
    try:
        positions = parse_positions(args.positions) if args.positions else None
    except ValueError as e:
        print(f"compare_logits.py: bad --positions: {e}", file=sys.stderr)
        return 2
    try:
        a = parse_logits_file(args.a)
        b = parse_logits_file(args.b)
    except (ParseError, OSError) as e:
        print(f"compare_logits.py: {e}", file=sys.stderr)
        return 2
    ok = compare(a, b, args.atol, args.rtol, positions, args.strict_argmax, names=("A", "B"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
