#!/usr/bin/env python3
"""The benchmark's result as JSON, and the change between two results (scripts/bench.sh).

    bench_result.py write OUT.json --meta key=value ...   < lines
        lines: "row|label|rps|p50_ms|p99_ms|non-2xx|rps_min-rps_max|p99_min-p99_max"
               "figure|name|value"  (value: a number, "12.5%" or "2.1x")
    bench_result.py compare BASELINE.json CURRENT.json
"""

import json
import sys


def number(text):
    """A figure's value as a number: "12.5%" -> 12.5, "2.1x" -> 2.1, "" -> None."""
    text = text.strip().rstrip("%x")
    try:
        return float(text)
    except ValueError:
        return None


def write(path, meta):
    rows, figures = [], {}
    for line in sys.stdin:
        parts = line.rstrip("\n").split("|")
        if parts[0] == "row" and len(parts) >= 7:
            _, label, rps, p50, p99, errors, spread = parts[:7]
            low, _, high = spread.partition("-")
            p99_low, _, p99_high = (parts[7] if len(parts) > 7 else "").partition("-")
            rows.append({
                "target": label,
                "requests_per_s": number(rps),
                "p50_ms": number(p50),
                "p99_ms": number(p99),
                "non_2xx": errors.strip() or "0",
                "requests_per_s_min": number(low),
                "requests_per_s_max": number(high),
                "p99_ms_min": number(p99_low),
                "p99_ms_max": number(p99_high),
            })
        elif parts[0] == "figure" and len(parts) >= 3:
            figures[parts[1]] = number(parts[2])
    result = {"meta": dict(item.split("=", 1) for item in meta), "rows": rows, "figures": figures}
    with open(path, "w", encoding="utf-8") as out:
        json.dump(result, out, indent=2)
        out.write("\n")


def change(before, after):
    if before is None or after is None or before == 0:
        return "n/a"
    return f"{100 * (after - before) / before:+.1f}%"


def compare(baseline_path, current_path):
    with open(baseline_path, encoding="utf-8") as f:
        baseline = json.load(f)
    with open(current_path, encoding="utf-8") as f:
        current = json.load(f)
    print(f"Against {baseline_path} (commit {baseline['meta'].get('commit', '?')}, "
          f"{baseline['meta'].get('date', '?')}):")
    before_rows = {row["target"]: row for row in baseline["rows"]}
    print(f"{'target':<42} {'req/s before':>12} {'after':>9} {'change':>8}   "
          f"{'p99 before':>10} {'after':>7} {'change':>8}")
    for row in current["rows"]:
        before = before_rows.get(row["target"])
        if before is None:
            continue
        print(f"{row['target']:<42} {before['requests_per_s'] or 0:>12.0f} "
              f"{row['requests_per_s'] or 0:>9.0f} "
              f"{change(before['requests_per_s'], row['requests_per_s']):>8}   "
              f"{before['p99_ms'] or 0:>10.2f} {row['p99_ms'] or 0:>7.2f} "
              f"{change(before['p99_ms'], row['p99_ms']):>8}")
    shared = [name for name in current["figures"] if name in baseline["figures"]]
    if shared:
        print()
        print(f"{'figure':<56} {'before':>9} {'after':>9}")
        for name in shared:
            before, after = baseline["figures"][name], current["figures"][name]
            print(f"{name:<56} {before if before is not None else '?':>9} "
                  f"{after if after is not None else '?':>9}")


def main(argv):
    if len(argv) >= 2 and argv[0] == "write":
        meta = argv[argv.index("--meta") + 1:] if "--meta" in argv else []
        write(argv[1], meta)
    elif len(argv) == 3 and argv[0] == "compare":
        compare(argv[1], argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
