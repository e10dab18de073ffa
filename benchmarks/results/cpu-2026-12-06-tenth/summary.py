import json, sys, statistics as st
from pathlib import Path
D = Path(sys.argv[1])
for suite in ("quick", "full"):
    rows = {}
    for i in (1, 2, 3):
        r = json.loads((D / f"{suite}-run{i}" / "results.json").read_text())
        recs = r["records"] if isinstance(r, dict) else r
        for x in recs:
            if x.get("strategy") != "single" or x.get("devices") != 1:
                continue
            key = (x["case"], x["framework"])
            rows.setdefault(key, []).append(x)
    print(f"## {suite}")
    cases = sorted({c for c, f in rows}, key=lambda c: list(k[0] for k in rows).index(c))
    for c in cases:
        z = rows.get((c, "zoo"), []); t = rows.get((c, "torch-eager"), [])
        zm = [x["step_s"]["median"]*1e3 for x in z]
        if t:
            tm = [x["step_s"]["median"]*1e3 for x in t]
            rat = [b / a for a, b in zip(zm, tm)]
            print(f"{c:18s} ratio median {st.median(rat):.2f}x ({', '.join(f'{v:.2f}' for v in rat)})  zoo {', '.join(f'{v:.1f}' for v in zm)}  torch {', '.join(f'{v:.1f}' for v in tm)}")
        else:
            print(f"{c:18s} zoo {', '.join(f'{v:.1f}' for v in zm)}")
