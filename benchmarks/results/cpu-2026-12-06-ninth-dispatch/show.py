import json, sys, glob, statistics as st
kind = sys.argv[1]
rows = {}
for v in ("all", "noarena_sync"):
    for d in sorted(glob.glob(f"{kind}-{v}-*/results.json")):
        for r in json.load(open(d))["records"]:
            key = (r["case"], r["framework"], r["strategy"], r.get("devices"))
            rows.setdefault(key, {}).setdefault(v, []).append(r)
for key, vs in rows.items():
    line = f"{key[0]:15s} {key[1]:11s} {key[2]:6s} {key[3]}"
    for v in ("all", "noarena_sync"):
        rs = vs.get(v, [])
        ms = [round(r["step_s"]["median"]*1e3, 1) for r in rs]
        sp = [r.get("speedup_vs_torch_eager") for r in rs if r.get("speedup_vs_torch_eager")]
        pf = [round(r.get("page_faults_per_step") or 0) for r in rs]
        line += f" | {v[:4]} ms {ms} x {[round(s,2) for s in sp]} pf {pf}"
    print(line)
