"""The Markdown table of an ``edgecoe bench --seeds ... --repeat N --json`` file: per entry the
medians over every run, with [min-max] ranges, ratios taken within each run first.

    python benchmarks/summary_table.py RESULT.json

The results page's tables of repeated runs are printed by this script from the committed raw JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _cell(entry: dict[str, object], key: str, digits: int) -> str:
    value, spread = entry.get(key), entry.get(f"{key}_range")
    if value is None:
        return "-"
    text = f"{float(value):,.{digits}f}"  # type: ignore[arg-type]
    if isinstance(spread, list) and spread[0] != spread[1]:
        text += f" ({spread[0]:,.{digits}f}-{spread[1]:,.{digits}f})"
    return text


def table(path: Path) -> str:
    data = json.loads(path.read_text(encoding="utf-8"))
    lines = []
    for point in data["points"]:
        runs = point.get("runs", [])
        lines.append(f"{point['package']}: budget {point['budget_bytes'] / 1e9:.2f} GB of "
                     f"{point['total_footprint_bytes'] / 1e9:.2f} GB; seeds {point.get('seeds')}, "
                     f"{point.get('repeat', 1)} run(s) each: medians of {len(runs) or 1} runs [min-max]"
                     + (f" ({point['label']})" if point.get("label") else ""))
        lines.append("")
        entries = point["entries"]
        reads = any(e.get("storage_read_bytes") is not None for e in entries.values())
        limited = any(e["report"].get("device_memory") for e in entries.values())
        lines.append("| entry | req/s | × samba | × all-resident | switches | × samba switches | p50 ms | p99 ms | runs |"
                     + (" GB read from storage |" if reads and limited else ""))
        lines.append("|---|---|---|---|---|---|---|---|---|" + ("---|" if reads and limited else ""))
        for name, entry in entries.items():
            latency = entry["latency_ms"]
            flag = " (suspect)" if entry.get("suspect") else ""
            read = entry.get("storage_read_bytes")
            lines.append(f"| {name}{flag} | {_cell(entry, 'throughput_rps', 1)} | {_cell(entry, 'ratio_vs_samba', 2)} | "
                         f"{_cell(entry, 'ratio_vs_all_resident', 2)} | {_cell(entry, 'num_switches', 0)} | "
                         f"{_cell(entry, 'switches_vs_samba', 2)} | {latency['p50']:,.0f} | {latency['p99']:,.0f} | "
                         f"{entry.get('num_runs', 1)} |"
                         + (f" {'-' if read is None else f'{read / 1e9:.2f}'} |" if reads and limited else ""))
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", type=Path)
    print(table(parser.parse_args().result))


if __name__ == "__main__":
    main()
