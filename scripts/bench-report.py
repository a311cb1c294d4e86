"""Gathers the rows every bench wrote (one CSV per bench, runs appended) into
one markdown report and one CSV: per figure the median over the runs, the
spread (lowest and highest run), its baseline and the median ratio."""

import csv
import statistics
import sys
from collections import OrderedDict
from pathlib import Path

FIELDS = ["bench", "case", "metric", "value", "unit", "baseline", "ratio", "samples"]


def fmt(v: float) -> str:
    if v != v:  # NaN
        return "n/a"
    if v == float("inf"):
        return "never"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def main(raw: Path, out: Path) -> None:
    figures: "OrderedDict[tuple, dict]" = OrderedDict()
    for path in sorted(raw.glob("*.csv")):
        with path.open(newline="") as f:
            for row in csv.reader(f):
                r = dict(zip(FIELDS, row))
                key = (r["bench"], r["case"], r["metric"])
                fig = figures.setdefault(
                    key,
                    {"values": [], "ratios": [], "unit": r["unit"], "baseline": r["baseline"], "samples": r["samples"]},
                )
                fig["values"].append(float(r["value"]))
                if r["ratio"]:
                    fig["ratios"].append(float(r["ratio"]))
    notes = {}
    for path in sorted(raw.glob("*.skipped")):
        notes[path.stem] = "skipped: " + path.read_text().strip()
    for path in sorted(raw.glob("*.failed")):
        notes[path.stem] = "FAILED " + path.read_text().strip()

    with (out / "report.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["bench", "case", "metric", "median", "lowest", "highest", "runs", "unit", "samples", "baseline", "ratio"])
        for (bench, case, metric), fig in figures.items():
            v = fig["values"]
            ratio = statistics.median(fig["ratios"]) if fig["ratios"] else ""
            w.writerow([bench, case, metric, statistics.median(v), min(v), max(v), len(v), fig["unit"], fig["samples"], fig["baseline"], ratio])

    lines = ["# Benchmark report", ""]
    benches = list(OrderedDict.fromkeys([k[0] for k in figures] + list(notes)))
    for bench in benches:
        lines += [f"## {bench}", ""]
        if bench in notes:
            lines += [notes[bench], ""]
        rows = [(k, f) for k, f in figures.items() if k[0] == bench]
        if not rows:
            continue
        lines += ["| case | figure | value | runs (lowest–highest) | baseline | ratio |", "|---|---|---:|---|---|---:|"]
        for (_, case, metric), fig in rows:
            v = fig["values"]
            spread = f"{len(v)} ({fmt(min(v))}–{fmt(max(v))})" if len(v) > 1 else "1"
            samples = f", n = {fig['samples']}" if fig["samples"] not in ("", "0", "1") else ""
            ratio = f"{statistics.median(fig['ratios']):.2f}×" if fig["ratios"] else ""
            lines.append(
                f"| {case} | {metric}{samples} | {fmt(statistics.median(v))} {fig['unit']} | {spread} | {fig['baseline']} | {ratio} |"
            )
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
