"""Interleaved A/B of stream settings in one process, for effects smaller than the spread between runs.

    python3 bench/ab.py --variants "base:;ovp:--overlap-priority;sdpa:--attention sdpa" --rounds 6 \
        --compile --cudnn-benchmark --compile-vae --skip-last-context-pass --json $OUT/ab.json

Separate `bench` processes differ by up to 5 % on one machine (bench/RESULTS.md, 2026-12-07, "steady-state
chunks"), more than the effects being measured. Here one model and one decoder are built and compiled once (the
`bench` arguments after the variants), every variant is warmed up, then each round runs every variant once, in an
order that rotates from round to round. Reported per variant: the median and best end-to-end time, and the median of its per-round ratio to the
first variant (paired, so drift of the machine cancels) with that ratio's range. A variant may set only what a
session can change: --attention, --skip-last-context-pass, --overlap / --overlap-priority (decode on a side
stream) and --no-split-times (time it as a user runs it, without the syncs that split DiT from decode time).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from stream_r1.bench import build, parser, run_once


def variant_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="variant", add_help=False)
    ap.add_argument("--attention", default=None)
    ap.add_argument("--skip-last-context-pass", action="store_true")
    ap.add_argument("--no-split-times", action="store_true", help="no syncs around the decode (DiT/decode read 0)")
    ap.add_argument("--overlap", action="store_true", help="decode chunk k on a side stream during chunk k+1")
    ap.add_argument("--overlap-priority", action="store_true", help="--overlap with the DiT on a high-priority stream")
    return ap


def parse_variants(text: str) -> list[tuple[str, argparse.Namespace]]:
    """'name:flags;name:flags' -> [(name, flags)]; flags as variant_parser reads them."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(";"))):
        name, _, flags = item.partition(":")
        out.append((name.strip(), variant_parser().parse_args(flags.split())))
    if len({n for n, _ in out}) != len(out) or not out:
        raise SystemExit(f"--variants needs distinct names, got {text!r}")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", required=True)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--json", default=None)
    own, rest = ap.parse_known_args(argv)
    args = parser().parse_args(rest)
    variants = parse_variants(own.variants)
    b = build(args)
    default_attention = args.attention

    def run(flags) -> dict:
        sc = b.sc.replace(skip_last_context_pass=flags.skip_last_context_pass or args.skip_last_context_pass)
        b.model.set_attention(flags.attention or default_attention)
        if b.decoder is not None:
            b.decoder.reset()
        return run_once(b.model, sc, b.context, args.height, args.width, b.lat, b.decoder,
                        split_times=not flags.no_split_times, overlap=flags.overlap,
                        overlap_priority=flags.overlap_priority)

    rounds: list[dict[str, dict]] = []
    with torch.no_grad():
        for name, flags in variants:                                      # warm-up: compile every variant's path
            run(flags)
        for r in range(own.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            rounds.append({name: run(flags) for name, flags in order})
    first = variants[0][0]
    frames = 1 + 4 * (b.lat - 1)
    rows = {}
    for name, _ in variants:
        totals = [rd[name]["total_s"] for rd in rounds]
        ratios = [rd[first]["total_s"] / rd[name]["total_s"] for rd in rounds]     # > 1: faster than the first
        chunks = [statistics.median(rd[name]["chunk_s"][k] for rd in rounds)
                  for k in range(len(rounds[0][name]["chunk_s"]))]
        rows[name] = dict(median_s=round(statistics.median(totals), 4), best_s=round(min(totals), 4),
                          fps_median=round(frames / statistics.median(totals), 2),
                          speedup_vs_first=round(statistics.median(ratios), 4),
                          speedup_range=[round(min(ratios), 4), round(max(ratios), 4)],
                          ttff_median_s=round(statistics.median(rd[name]["ttff_s"] for rd in rounds), 4),
                          dit_median_s=round(statistics.median(rd[name]["dit_s"] for rd in rounds), 4),
                          decode_median_s=round(statistics.median(rd[name]["decode_s"] for rd in rounds), 4),
                          chunk_median_s=[round(c, 4) for c in chunks], totals=[round(t, 4) for t in totals])
    out = dict(device=torch.cuda.get_device_name() if b.dev.type == "cuda" else "cpu", date=time.strftime("%Y-%m-%d"),
               command="python3 bench/ab.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               frames=frames, rounds=own.rounds, variants=rows)
    for name, row in rows.items():
        print(f"{name:14s} median {row['median_s']:.4f} s ({row['fps_median']:.2f} FPS)  best {row['best_s']:.4f}  "
              f"x{row['speedup_vs_first']:.4f} vs {first} [{row['speedup_range'][0]:.4f}, {row['speedup_range'][1]:.4f}]  "
              f"first frames {row['ttff_median_s']:.3f} s  dit {row['dit_median_s']:.3f} dec {row['decode_median_s']:.3f}")
    if own.json:
        with open(own.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
