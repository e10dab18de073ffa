import json, glob, sys, statistics as st
pre = sys.argv[1]
rows = {}
for v in ("all", "noarena", "noarena_sync"):
    for i in range(1, 9):
        try: recs = json.load(open(f"{pre}-{v}-{i}/results.json"))["records"]
        except FileNotFoundError: continue
        for r in recs:
            rows.setdefault((r["case"], r["strategy"], r["devices"]), {}).setdefault(v, {})[i] = r["step_s"]["median"] * 1e3
for k, vs in rows.items():
    out = f"{k[0]:15s} {k[1]:6s} {k[2]}"
    for v, d in vs.items():
        out += f" | {v[:7]} {[round(d[i],1) for i in sorted(d)]} med {st.median(d.values()):.1f}"
    if "all" in vs and "noarena_sync" in vs:
        pairs = [vs["all"][i] / vs["noarena_sync"][i] for i in vs["all"] if i in vs["noarena_sync"]]
        out += f" | all/sync per pair {[round(p,3) for p in pairs]}"
    print(out)
