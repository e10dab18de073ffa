"""The median step time of A and B per case, A/B, each pair's ratio and the last losses."""
import json, sys, collections, numpy as np
d = collections.defaultdict(lambda: collections.defaultdict(list)); loss = {}
for l in open(sys.argv[1]):
    k, _, js = l.strip().partition(" RESULT ")
    if not js: continue
    for c, v in json.loads(js).items():
        d[c][k].append(v["median_ms"]); loss[(c, k)] = v["loss"]
for c in d:
    a, b = d[c]["A"], d[c]["B"]
    print(f"{c:18s} A {np.median(a):8.2f} B {np.median(b):8.2f}  A/B {np.median(a)/np.median(b):.3f}  pairs {[round(x/y,3) for x,y in zip(a,b)]}  loss {loss.get((c,'A'))} {loss.get((c,'B'))}")
