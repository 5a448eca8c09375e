"""Three seeds of the rows chosen on validation: seed 0 from the round that chose them, seeds 1 and
2 (``<name>-s1``, ``<name>-s2``) from the round that ran them: round 2's rows (runs2/, runs3/),
rounds 4-5's rows with the moving average (runs4/, runs6/) and round 11's LGA with input dropout
(runs11/, its seeds there too); Banking77's long-budget rows of round 7 with their seeds from
round 13 (runs7/); the entry modes of rounds 20-22, shift (runs20/, runs21/) and affine
(runs22/), on SST-2 and Banking77 (runs21/, runs23/); DGA with the input gain and dropout
(runs25/; Banking77: runs26/) and with more dropout or the input side alone (runs27/; the input
side alone on Banking77: runs29/); SST-2 validated on phrases of 10 words or more (runs31/);
Banking77's gain row with its head started at the class means (runs33/); round 31's rows with
their seed 2 and the rank-4 kernel-3 token map (seed 0: runs36/) with seeds 1 and 2 (runs37/). Writes
results3.md (round 3's rows), results6.md (rounds 3 and 6), results11-seeds.md (SST-2's rows),
results13-seeds.md (Banking77's, with the linear probe of the committed table beside them),
results21-seeds.md (SST-2 with the entry modes), results21-b77-seeds.md and
results23-b77-seeds.md (Banking77 with them), results25-seeds.md (SST-2 with the input gain),
results26-b77-seeds.md (Banking77 with it), results27-seeds.md (SST-2 with more dropout, or
the input side alone), results29-b77-seeds.md (Banking77 with the input side alone) and
results31-seeds.md (SST-2 validated on long phrases, its own linear probe beside the rows) and
results33-b77-seeds.md (Banking77 with the class-means start) and results37-seeds.md (SST-2 validated
on long phrases, 3 seeds, with the kernel-3 map), results39-seeds.md (with the affine row given
the map too, runs39/), results40-b77-seeds.md (Banking77's dark-gray row with the kernel-3 map,
runs40/), results41-seeds.md (SST-2 validated on long phrases with round 41's variants of the
map, runs41/), results42-seeds.md (SST-2's long-budget rows with full fine-tuning's seeds 1
and 2, runs42/) and results43-seeds.md (every SST-2 long-budget row under 10+ word validation,
runs43/ with the rounds before): means ± std over the seeds found."""

import json
import pathlib
import statistics
import sys

from summarize import spread  # the same folder: run as a script

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/gap-sweep")
ROUND3 = [(name, "runs2", "runs3") for name in ("lora-1e-3", "lga-8-5e-3", "dga-both-5e-3-tok2e-2")]
ROUND6 = [(name, "runs4", "runs6") for name in ("lga-8-5e-3-ema995", "dga-both-5e-3-tok2e-2-ema995")]
ROUND11 = [("lga-8-drop10-5e-3-ema995", "runs11", "runs11")]
ROUND13 = [
    (name, "runs7", "runs7") for name in ("b77-lora", "b77-lga-8-5e-3-ema995", "b77-dga-both-5e-3-tok2e-2-ema995")
]

ROUND21 = [("lga-1-shift-5e-3-ema995", "runs20", "runs21"), ("lga-2-affine-5e-3-ema995", "runs22", "runs22")]
ROUND21_B77 = [("b77-lga-1-shift-5e-3-ema995", "runs21", "runs21")]
ROUND23_B77 = [("b77-lga-2-affine-5e-3-ema995", "runs23", "runs23")]
ROUND25 = [("dga-both-gain-drop10-5e-3-tok2e-2-ema995", "runs25", "runs25")]
ROUND26_B77 = [("b77-dga-both-gain-drop10-5e-3-tok2e-2-ema995", "runs26", "runs26")]
ROUND29_B77 = [("b77-dga-input-only-gain-drop10-5e-3-tok2e-2-ema995", "runs29", "runs29")]
ROUND27 = [
    (name, "runs27", "runs27")
    for name in ("dga-both-gain-drop20-5e-3-tok2e-2-ema995", "dga-input-only-gain-drop10-5e-3-tok2e-2-ema995")
]

ROUND31 = [
    (name, "runs31", "runs31")
    for name in (
        "lora-1e-3-vw10",
        "lga-2-affine-5e-3-ema995-vw10",
        "dga-input-only-gain-drop10-5e-3-tok2e-2-ema995-vw10",
        "linear-probe-vw10",
    )
]
ROUND37 = [(name, "runs31", ("runs31", "runs37")) for name, _, _ in ROUND31[:3]] + [
    ("dga-input-only-gain-lowrank4-k3-drop10-5e-3-tok2e-2-ema995-vw10", "runs36", "runs37"),
    ROUND31[3],
]
ROUND39 = [("lga-2-affine-lowrank4-k3-5e-3-ema995-vw10", "runs39", "runs39")]
ROUND33_B77 = [("b77-dga-both-gain-drop10-5e-3-tok2e-2-ema995-means", "runs33", "runs33")]
ROUND40_B77 = [("b77-dga-input-only-gain-lowrank4-k3-drop10-5e-3-tok2e-2-ema995", "runs40", "runs40")]
# the dark-gray token maps: round 41's variants of round 37's map (its variant, input dropout 0.1)
MAPS_41 = (
    ("input-only-gain-lowrank4-k5", 10),
    ("input-only-gain-lowrank2-k3", 10),
    ("both-gain-lowrank4-k3", 10),
    ("input-only-gain-lowrank4-k3", 20),
)
MAP_37 = ("input-only-gain-lowrank4-k3", 10)


def map_run(variant: str, drop: int) -> str:
    return f"dga-{variant}-drop{drop}-5e-3-tok2e-2-ema995"


ROUND41 = [(f"{map_run(*m)}-vw10", "runs41", "runs41") for m in MAPS_41]
ROUND42 = [("full-ft-2e-4", "runs2", "runs42")]
# SST-2's long-budget rows (results42-seeds.md) not run under 10+ word validation before round 43
ROUND43 = [
    (f"{name}-vw10", "runs43", "runs43")
    for name in (
        "dga-both-5e-3-tok2e-2-ema995",
        "dga-both-gain-drop10-5e-3-tok2e-2-ema995",
        "dga-both-gain-drop20-5e-3-tok2e-2-ema995",
        "lga-1-shift-5e-3-ema995",
        "lga-8-drop10-5e-3-ema995",
        "lga-8-5e-3-ema995",
        "full-ft-2e-4",
    )
]
ROUND44_B77 = [("b77-full-ft", "runs44", "runs44")]
# SST-2 validated on ~7,500 long phrases (10+ words, 30% held out, at most 8,000)
ROUND45 = [(f"{name}-vl", "runs45", "runs45") for name in ("lora-1e-3", *(map_run(*m) for m in (*MAPS_41, MAP_37)))]
# what round 31's rows were validated as before: LoRA (round 3), the affine row, SST-2's dark-gray row
ROUND31_BEFORE = [
    ("lora-1e-3", "runs2", "runs3"),
    ("lga-2-affine-5e-3-ema995", "runs22", "runs22"),
    ("dga-input-only-gain-drop10-5e-3-tok2e-2-ema995", "runs27", "runs27"),
]


def record(folder: pathlib.Path) -> dict | None:
    f = folder / "classification.json"
    if not f.exists():
        return None
    return next(r for r in json.loads(f.read_text())["records"] if r["metric"] == "accuracy")


Row = tuple[str, str, str | tuple[str, str]]  # name, seed 0's folder, seeds 1 and 2's (one or each)


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| run | method | variant | seeds | val accuracy | test accuracy | best epochs | train s (mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, first, more in rows:
        lines += row(name, first, more)
    return lines


def records(name: str, first: str, more: str | tuple[str, str]) -> list[dict]:
    """The records found of a row's seeds 0 (in ``first``), 1 and 2 (in ``more``, or each in its own)."""
    later = (more, more) if isinstance(more, str) else more
    recs = [record(root / first / name)]
    recs += [record(root / f / f"{name}-s{s}") for s, f in zip((1, 2), later, strict=True)]
    return [r for r in recs if r]


def row(name: str, first: str, more: str | tuple[str, str], seeds: list[int] | None = None) -> list[str]:
    recs = [r for r in records(name, first, more) if seeds is None or r["seeds"][0] in seeds]
    if not recs:
        return []
    seeds = [r["seeds"][0] for r in recs]
    return [
        f"| {name} | {recs[0]['method']} | {recs[0]['variant']} | {', '.join(map(str, seeds))} | "
        f"{spread([r['val_accuracy'] for r in recs])} | {spread([r['mean'] for r in recs])} | "
        f"{', '.join(str(r['best_epoch']) for r in recs if 'best_epoch' in r)} | "  # a probe has no epochs
        f"{statistics.mean(r['train_seconds'] for r in recs):.0f} |"
    ]


def same_seeds(rows: list[Row], earlier: list[Row]) -> list[str]:
    """The ``earlier`` rows on the seeds their ``rows`` counterparts have (pairs, in order)."""
    lines = ["", "The same seeds under the selection of the rounds that chose these rows:", ""] + table([])
    for new, old in zip(rows, earlier, strict=True):
        lines += row(*old, seeds=[r["seeds"][0] for r in records(*new)])
    return lines


def probe(dataset: str) -> list[str]:
    """The linear probe on the box's outputs (level black) of the committed classification table."""
    results = json.loads((root.resolve().parent / "results" / "classification.json").read_text())["records"]
    r = next(r for r in results if (r["dataset"], r["method"], r["metric"]) == (dataset, "linear-probe", "accuracy"))
    seeds = ", ".join(map(str, r["seeds"]))
    return [
        f"| linear probe (committed table) | linear-probe | {r['variant']} | {seeds} | {r['val_accuracy']:.4f} | "
        f"{r['mean']:.4f} ± {r['std']:.4f} | | |"
    ]


# Banking77's rows as the rounds added them, and each set's probe (read once)
B77_21 = ROUND13 + ROUND21_B77
B77_26 = B77_21 + ROUND23_B77 + ROUND26_B77
B77_29 = B77_26 + ROUND29_B77
SST2_27 = ROUND3[:1] + ROUND21 + ROUND11 + ROUND6 + ROUND25
SST2_LONG = SST2_27 + ROUND27  # every SST-2 long-budget row under the committed validation
SST2_VW39 = ROUND37 + ROUND39  # and under 10+ word validation, as rounds 39 and 41 added them
SST2_VW41 = SST2_VW39 + ROUND41
B77_PROBE, SST2_PROBE = probe("banking77"), probe("sst2")
TABLES = (
    (ROUND3, "results3.md", []),
    (ROUND3 + ROUND6, "results6.md", []),
    (ROUND3 + ROUND6 + ROUND11, "results11-seeds.md", []),
    (ROUND13, "results13-seeds.md", B77_PROBE),
    (ROUND3[:1] + ROUND21 + ROUND11 + ROUND6, "results21-seeds.md", SST2_PROBE),
    (B77_21, "results21-b77-seeds.md", B77_PROBE),
    (B77_21 + ROUND23_B77, "results23-b77-seeds.md", B77_PROBE),
    (SST2_27, "results25-seeds.md", SST2_PROBE),
    (B77_26, "results26-b77-seeds.md", B77_PROBE),
    (SST2_LONG, "results27-seeds.md", SST2_PROBE),
    (B77_29, "results29-b77-seeds.md", B77_PROBE),
    (ROUND31, "results31-seeds.md", same_seeds(ROUND31[:3], ROUND31_BEFORE) + SST2_PROBE),
    (B77_29 + ROUND33_B77, "results33-b77-seeds.md", B77_PROBE),
    (ROUND37, "results37-seeds.md", same_seeds(ROUND37[:3], ROUND31_BEFORE) + SST2_PROBE),
    (SST2_VW39, "results39-seeds.md", SST2_PROBE),
    (B77_29 + ROUND40_B77, "results40-b77-seeds.md", B77_PROBE),
    (SST2_VW41, "results41-seeds.md", SST2_PROBE),
    (SST2_LONG + ROUND42, "results42-seeds.md", SST2_PROBE),
    (SST2_VW41 + ROUND43, "results43-seeds.md", SST2_PROBE),
    (B77_29 + ROUND40_B77 + ROUND44_B77, "results44-b77-seeds.md", B77_PROBE),
    (ROUND45, "results45-seeds.md", SST2_PROBE),
)
for rows, file, extra in TABLES:
    lines = table(rows) + extra
    print("\n".join(lines))
    (root / file).write_text("\n".join(lines) + "\n")
