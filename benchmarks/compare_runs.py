"""Two ``edgecoe bench --json`` files side by side, as a Markdown table per sweep point.

    python benchmarks/compare_runs.py BEFORE.json AFTER.json [--labels before,after]

For each entry: throughput, ratio to samba, switches, p50 and p99 of both runs,
and the throughput ratio after/before. Used to check that a change left the
figures as they were (a refactor) or to show what it moved.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _entries(path: Path) -> list[tuple[str, dict[str, dict[str, object]]]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [(point.get("label", ""), point["entries"]) for point in data["points"]]


def _fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(before: Path, after: Path, labels: tuple[str, str]) -> str:
    a_name, b_name = labels
    lines = []
    for (label, a), (_, b) in zip(_entries(before), _entries(after), strict=True):
        if label:
            lines.append(f"\n{label}\n")
        lines.append(f"| entry | req/s {a_name} | req/s {b_name} | {b_name}/{a_name} | x samba {a_name} | "
                     f"x samba {b_name} | switches {a_name} | switches {b_name} | p50 ms {a_name} | p50 ms {b_name} | "
                     f"p99 ms {a_name} | p99 ms {b_name} |")
        lines.append("|" + "---|" * 12)
        for name in a:
            ea, eb = a[name], b.get(name)
            if eb is None:
                continue
            ta, tb = float(ea["throughput_rps"]), float(eb["throughput_rps"])  # type: ignore[arg-type]
            la, lb = ea["latency_ms"], eb["latency_ms"]
            lines.append(
                f"| {name} | {_fmt(ta)} | {_fmt(tb)} | {tb / ta if ta else float('nan'):.2f} | "
                f"{_fmt(ea['ratio_vs_samba'], 2)} | {_fmt(eb['ratio_vs_samba'], 2)} | {_fmt(ea['num_switches'])} | "
                f"{_fmt(eb['num_switches'])} | {_fmt(la['p50'], 0)} | {_fmt(lb['p50'], 0)} | "  # type: ignore[index]
                f"{_fmt(la['p99'], 0)} | {_fmt(lb['p99'], 0)} |")  # type: ignore[index]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--labels", default="before,after", help="names of the two runs, comma-separated")
    args = parser.parse_args()
    first, second = args.labels.split(",", 1)
    print(table(args.before, args.after, (first, second)))


if __name__ == "__main__":
    main()
