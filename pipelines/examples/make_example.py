"""Regenerates customers.csv, the small messy table the demo runs on (seeded; run once)."""

import csv
from pathlib import Path

import numpy as np

rng = np.random.default_rng(7)
n = 600
age = rng.integers(18, 80, n)
children = np.clip(rng.poisson(np.where(age > 30, 1.6, 0.4)), 0, 6)
income = np.round(18000 + 900 * (age - 18) + 4000 * rng.standard_normal(n) + 2500 * children, 2)
bp = np.round(70 + 0.35 * (age - 18) + 6 * rng.standard_normal(n)).astype(int)
weight = np.round(55 + 0.2 * age + 0.12 * (bp - 70) + 8 * rng.standard_normal(n), 1)
segment = np.where(income > 60000, "premium", np.where(income > 35000, "standard", "basic"))
region = rng.choice(["north", "south", "east", "west"], n, p=[0.4, 0.3, 0.2, 0.1])
day = rng.integers(0, 1000, n)
signup = np.datetime64("2022-01-01") + day.astype("timedelta64[D]")

rows = []
for i in range(n):
    row = {"customer_id": f"C{10000 + i}", "age": str(age[i]), "children": str(children[i]),
           "income": f"{income[i]:.2f}", "blood_pressure": str(bp[i]), "weight_kg": f"{weight[i]:.1f}",
           "segment": segment[i], "region": region[i], "signup_date": str(signup[i])}
    r = rng.random()
    if r < 0.05:
        row["blood_pressure"] = "0"          # disguised: a 0 blood pressure means "not measured"
    elif r < 0.08:
        row["income"] = "99999"               # disguised: the old system's "unknown"
    elif r < 0.11:
        row["age"] = "-1"
    if rng.random() < 0.06:
        row["segment"] = rng.choice(["N/A", "?", "NULL"])
    if rng.random() < 0.05:
        row["region"] = rng.choice(["", " "])  # real nulls
    if rng.random() < 0.04:
        row["weight_kg"] = "-"
    rows.append(row)

out = Path(__file__).with_name("customers.csv")
with out.open("w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    fh.write("C99998,41,2,52000.00,88\n")                                   # ragged: 5 fields
    fh.write("C99999,45,1,47000.00,85,72.0,standard,nowhere-land,2023-05-01\n")  # unknown region
print(f"wrote {out}")
