"""Test cases per phase from a schemathesis NDJSON report (scripts/contract.sh prints them).

usage: python count_cases.py <report>.ndjson
"""
import collections
import json
import sys

cases = collections.Counter()
requests = collections.Counter()
scenarios = collections.Counter()
for line in open(sys.argv[1], encoding="utf-8"):
    event = json.loads(line)
    finished = event.get("ScenarioFinished")
    if not finished or not finished.get("recorder"):
        continue
    phase = finished["phase"]
    rec = finished["recorder"]
    scenarios[phase] += 1
    cases[phase] += len(rec.get("cases", {}))
    requests[phase] += len(rec.get("interactions", {}))
print(f"{'phase':16s} {'scenarios':>9s} {'cases':>7s} {'requests':>8s}")
for phase in ("auth_bootstrap", "examples", "coverage", "fuzzing", "stateful"):
    if phase in scenarios:
        print(f"{phase:16s} {scenarios[phase]:9d} {cases[phase]:7d} {requests[phase]:8d}")
print(f"{'total':16s} {sum(scenarios.values()):9d} {sum(cases.values()):7d} {sum(requests.values()):8d}")
