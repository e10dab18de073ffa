"""Per case: step ms of each variant per pair, and the ratio none / noarena_sync per pair."""
import json, sys, statistics as st
pre = sys.argv[1]
rows = {}
for v in ("none", "noarena_sync"):
    for i in range(1, 9):
        try: recs = json.load(open(f"{pre}-{v}-{i}/results.json"))["records"]
        except FileNotFoundError: continue
        for r in recs:
            rows.setdefault(r["case"], {}).setdefault(v, {})[i] = r["step_s"]["median"] * 1e3
for case, vs in rows.items():
    out = f"{case:16s}"
    for v, d in vs.items():
        out += f" | {v}: {', '.join(f'{d[i]:.1f}' for i in sorted(d))}"
    if len(vs) == 2:
        pairs = [vs["none"][i] / vs["noarena_sync"][i] for i in vs["none"] if i in vs["noarena_sync"]]
        out += f" | none / zoo's, per pair: {', '.join(f'{p:.2f}' for p in pairs)}"
    print(out)
