#!/usr/bin/python3
"""Renders docs/RESULTS.md (+ SVG plots) from the run JSONs scripts/results.sh writes.

Usage: results_render.py RUNS_DIR OUT_MD SVG_DIR [STUDY_RUNS_DIR]

With STUDY_RUNS_DIR (results/study: issue 14's held-out study, 5 seeds at full size), the page
leads with that study: accuracy-vs-budget plots of its main configurations and the tables of
docs/results/STUDY.md (rendered by select_summary.py --study). The tables after it are the
earlier, smaller study in RUNS_DIR.

Every run JSON is a prune-local report.json plus a "study" object (id, group, granularity,
budget, strategy, seed, command, wall_seconds). Numbers are aggregated over seeds as mean ± sd
(sample standard deviation, n − 1; "±" is omitted for a single run). Held-out accuracy is the
report's top-level `accuracy` (the reloaded artifact on the 1,000 held-out samples).
Rank correlations are Spearman's ρ with average ranks for ties, computed here from the audit
records (report["audit"]["policies"]), so they can be recomputed for any η.
"""
import glob
import json
import math
import os
import statistics
import sys
from collections import defaultdict

STRATEGY_ORDER = ["UNIFORM", "OWL", "RANDOM_SEARCH", "EFFICIENTLLAVA", "EFFICIENTLLAVA_ETA0"]
GRAN_ORDER = ["UNSTRUCTURED", "STRUCTURED"]
ABLATION_ORDER = ["ablation-eta-0", "ablation-eta-1", "ablation-eta-10", "ablation-eta-100",
                  "ablation-eta-300", "ablation-eta-auto", "ablation-proj-off",
                  "ablation-eta0-proj-off"]
ABLATION_LABEL = {
    "ablation-eta-0": "η = 0 (no SRM term)",
    "ablation-eta-1": "η = 1",
    "ablation-eta-10": "η = 10",
    "ablation-eta-100": "η = 100",
    "ablation-eta-300": "η = 300",
    "ablation-eta-auto": "η = auto (default)",
    "ablation-proj-off": "η = auto, projector training off",
    "ablation-eta0-proj-off": "η = 0, projector training off",
}
COLOURS = {"UNIFORM": "#1f77b4", "OWL": "#2ca02c", "RANDOM_SEARCH": "#7f7f7f",
           "EFFICIENTLLAVA": "#d62728", "EFFICIENTLLAVA_ETA0": "#ff7f0e", "dense": "#000000"}


def load(runs_dir):
    runs = []
    for path in sorted(glob.glob(os.path.join(runs_dir, "*.json"))):
        try:
            with open(path) as f:
                r = json.load(f)
        except (OSError, ValueError) as e:
            print(f"{path}: skipped ({e})", file=sys.stderr)
            continue
        if "study" in r:
            runs.append(r)
    return runs


def mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else None
    return m, sd, len(values)


def fmt(values, scale=100.0, digits=1, show_n=True):
    m, sd, n = mean_sd(values)
    if m is None:
        return "—"
    s = f"{m * scale:.{digits}f}"
    if sd is not None:
        s += f" ± {sd * scale:.{digits}f}"
    if show_n and n < 3:
        s += f" (n={n})"
    return s


def ranks(xs):
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            r[order[k]] = avg
        i = j + 1
    return r


def spearman(xs, ys):
    if len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den > 0 else None


def heldout(r):
    return r.get("accuracy") if "failed" not in r["study"] else None


def svg_plot(path, title, series, dense):
    """series: {strategy: [(budget, mean, sd)]}; accuracies in [0, 1]."""
    w, h, ml, mr, mt, mb = 600, 340, 56, 190, 30, 44
    budgets = sorted({b for pts in series.values() for b, _, _ in pts})
    if not budgets:
        return False
    xmin, xmax = min(budgets + [0.3]) - 0.05, 1.0
    ys = [m for pts in series.values() for _, m, _ in pts] + ([dense] if dense else [])
    ymin = max(0.0, math.floor((min(ys) - 0.05) * 10) / 10)
    ymax = 1.0

    def X(b):
        return ml + (b - xmin) / (xmax - xmin) * (w - ml - mr)

    def Y(a):
        return mt + (ymax - a) / (ymax - ymin) * (h - mt - mb)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{ml}" y="18" font-size="14">{title}</text>']
    y = ymin
    while y <= ymax + 1e-9:
        out.append(f'<line x1="{ml}" x2="{w - mr}" y1="{Y(y):.1f}" y2="{Y(y):.1f}" '
                   f'stroke="#ddd"/><text x="{ml - 6}" y="{Y(y) + 4:.1f}" '
                   f'text-anchor="end">{y * 100:.0f}%</text>')
        y += 0.1
    for b in budgets + [1.0]:
        out.append(f'<text x="{X(b):.1f}" y="{h - mb + 16}" text-anchor="middle">{b:g}</text>')
    out.append(f'<text x="{(ml + w - mr) / 2:.0f}" y="{h - 8}" text-anchor="middle">'
               'FLOPs budget (fraction of dense)</text>')
    out.append(f'<text x="14" y="{(mt + h - mb) / 2:.0f}" transform="rotate(-90 14 '
               f'{(mt + h - mb) / 2:.0f})" text-anchor="middle">held-out accuracy</text>')
    if dense is not None:
        out.append(f'<line x1="{ml}" x2="{w - mr}" y1="{Y(dense):.1f}" y2="{Y(dense):.1f}" '
                   'stroke="#000" stroke-dasharray="4 3"/>')
    legend_y = mt + 10
    for name in STRATEGY_ORDER + ["dense"]:
        if name == "dense":
            if dense is None:
                continue
            out.append(f'<line x1="{w - mr + 10}" x2="{w - mr + 30}" y1="{legend_y}" '
                       f'y2="{legend_y}" stroke="#000" stroke-dasharray="4 3"/>'
                       f'<text x="{w - mr + 36}" y="{legend_y + 4}">dense</text>')
            continue
        pts = sorted(series.get(name, []))
        if not pts:
            continue
        c = COLOURS[name]
        d = " ".join(f"{'M' if i == 0 else 'L'}{X(b):.1f},{Y(m):.1f}"
                     for i, (b, m, _) in enumerate(pts))
        out.append(f'<path d="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
        for b, m, sd in pts:
            if sd:
                out.append(f'<line x1="{X(b):.1f}" x2="{X(b):.1f}" y1="{Y(m - sd):.1f}" '
                           f'y2="{Y(m + sd):.1f}" stroke="{c}"/>')
            out.append(f'<circle cx="{X(b):.1f}" cy="{Y(m):.1f}" r="3" fill="{c}"/>')
        out.append(f'<line x1="{w - mr + 10}" x2="{w - mr + 30}" y1="{legend_y}" y2="{legend_y}" '
                   f'stroke="{c}" stroke-width="2"/><text x="{w - mr + 36}" '
                   f'y="{legend_y + 4}">{name}</text>')
        legend_y += 18
    out.append("</svg>")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace(path + ".tmp", path)
    return True


# The held-out study's configurations drawn in its plots, as the plot's series names.
STUDY_SERIES = {"uniform": "UNIFORM", "owl": "OWL", "random": "RANDOM_SEARCH",
                "default": "EFFICIENTLLAVA"}


def study_section(study_dir, svg_dir):
    """Plots of the held-out study (unit layer, 64 search samples) and STUDY.md's tables."""
    runs = [r for r in load(study_dir) if "failed" not in r["study"]]
    lines = ["## The held-out study (issue 14: 5 seeds, full-size searches)", "",
             "Accuracy on the 1,000 held-out samples against the FLOPs budget, mean ± sd over "
             "seeds 0–4; EFFICIENTLLAVA is prune-local with no tuning flags (today's default). "
             "The tables below it (docs/results/STUDY.md) give every configuration with paired "
             "95 % confidence intervals.", ""]
    dense = [r["dense"]["accuracy"] for r in runs if "dense" in r]
    dense_acc = statistics.fmean(dense) if dense else None
    for gran in GRAN_ORDER:
        series = defaultdict(list)
        for cfg, name in STUDY_SERIES.items():
            by_budget = defaultdict(list)
            for r in runs:
                st = r["study"]
                if st["granularity"] == gran and st["group"] == "study-" + cfg:
                    by_budget[st["budget"]].append(heldout(r))
            for b, accs in sorted(by_budget.items()):
                m, sd, _ = mean_sd(accs)
                series[name].append((b, m, sd))
        svg = f"study-accuracy-{gran.lower()}.svg"
        if svg_plot(os.path.join(svg_dir, svg), f"{gran}: held-out accuracy vs budget (5 seeds)",
                    series, dense_acc):
            lines += [f"![{gran}: held-out study](results/{svg})", ""]
    table = os.path.join(svg_dir, "STUDY.md")
    if os.path.exists(table):
        body = open(table).read().split("\n")
        body = [("#" + l if l.startswith("## ") else l) for l in body if not l.startswith("# ")]
        lines += body
    lines += ["## The earlier study (2026-11-30: 3 seeds, population 16, 8 generations, the "
              "defaults of the time)", ""]
    return lines


def main():
    if len(sys.argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    runs_dir, out_md, svg_dir = sys.argv[1:4]
    study_dir = sys.argv[4] if len(sys.argv) == 5 else None
    runs = load(runs_dir)
    os.makedirs(svg_dir, exist_ok=True)
    ok = [r for r in runs if "failed" not in r["study"]]
    lines = ["# Results: does the search earn its keep?", "",
             "Generated by `scripts/results.sh` (renderer: `scripts/results_render.py`) from "
             f"{len(runs)} runs; do not edit by hand — the prose lives in "
             "`docs/results/FINDINGS.md`, included below.", ""]
    findings = os.path.join(svg_dir, "FINDINGS.md")
    if os.path.exists(findings):
        lines += [open(findings).read().rstrip(), ""]
    if study_dir is not None and glob.glob(os.path.join(study_dir, "*.json")):
        lines += study_section(study_dir, svg_dir)

    dense = [r["dense"]["accuracy"] for r in ok if "dense" in r]
    dense_acc = statistics.fmean(dense) if dense else None
    if ok:
        prov = ok[0].get("provenance", {})
        cpu = prov.get("cpu", {})
        lines += ["## Setup", "",
                  f"- Model: models/tiny-llava-shapes (dense held-out accuracy "
                  f"{dense_acc * 100:.1f} %)." if dense_acc is not None else "- Model: tiny.",
                  "- Search samples: 64 from shapes-vqa seed 1000+s (split search); held-out: "
                  "1,000 from seed 2000 (split eval); s = the run's seed (0, 1, 2).",
                  f"- Machine: {cpu.get('model', '?')}, {cpu.get('cores', '?')} cores, "
                  f"libtorch {prov.get('libraries', {}).get('libtorch', '?')}, "
                  f"threads {prov.get('threads', '?')}.",
                  f"- Run time: {sum(r['study'].get('wall_seconds', 0) for r in ok) / 60:.0f} "
                  f"min of prune-local wall time in all.", ""]
        lines += ["Example command (one run):", "", "```",
                  ok[0]["study"].get("command", ""), "```", ""]

    # --- main tables ---
    for group, title in (("main", "Held-out accuracy at fixed FLOPs budgets"),
                         ("b10", "At the budget where UNIFORM loses ≥ 10 points")):
        sel = [r for r in runs if r["study"]["group"] == group]
        if not sel:
            continue
        lines += [f"## {title}", ""]
        for gran in GRAN_ORDER:
            gsel = [r for r in sel if r["study"]["granularity"] == gran]
            if not gsel:
                continue
            budgets = sorted({r["study"]["budget"] for r in gsel}, reverse=True)
            lines += [f"### {gran}", "",
                      "Held-out accuracy % (mean ± sd over seeds); below it the realized FLOPs "
                      "ratio and the latency ratio (pruned / dense, same batch).", "",
                      "| strategy | " + " | ".join(f"budget {b:g}" for b in budgets) + " |",
                      "|---|" + "---|" * len(budgets)]
            series = defaultdict(list)
            for st in STRATEGY_ORDER:
                cells, fl, lat = [], [], []
                for b in budgets:
                    rs = [r for r in gsel if r["study"]["strategy"] == st
                          and r["study"]["budget"] == b]
                    failed = [r for r in rs if "failed" in r["study"]]
                    accs = [heldout(r) for r in rs if heldout(r) is not None]
                    if not rs:
                        cells.append("—"); fl.append("—"); lat.append("—")
                        continue
                    if failed and not accs:
                        cells.append("n/a: " + failed[0]["study"]["failed"][:60])
                        fl.append(""); lat.append("")
                        continue
                    cells.append(fmt(accs))
                    fl.append(fmt([r.get("flops_ratio") for r in rs if "flops_ratio" in r],
                                  1, 3, show_n=False))
                    lat.append(fmt([r.get("latency_ratio") for r in rs
                                    if "latency_ratio" in r], 1, 2, show_n=False))
                    m, sd, _ = mean_sd(accs)
                    series[st].append((b, m, sd))
                lines.append(f"| {st} | " + " | ".join(cells) + " |")
                lines.append(f"| ↳ FLOPs / latency | " +
                             " | ".join(f"{a} / {b}" if a else "" for a, b in zip(fl, lat)) +
                             " |")
            lines.append("")
            if group == "main":
                name = f"accuracy-{gran.lower()}.svg"
                if svg_plot(os.path.join(svg_dir, name), f"{gran}: held-out accuracy vs budget",
                            series, dense_acc):
                    lines += [f"![{gran} accuracy vs budget](results/{name})", ""]

    # --- ablations ---
    sel = [r for r in ok if r["study"]["group"].startswith("ablation-")]
    if sel:
        b = sel[0]["study"]["budget"]
        lines += ["## Ablations: the SRM term (η) and projector training", "",
                  f"EFFICIENTLLAVA, UNSTRUCTURED (WANDA search, SPARSEGPT final), budget {b:g}. "
                  "Audit: up to 32 of the policies each search evaluated (evenly spaced, plus the chosen "
                  "one), re-scored under the "
                  "final projector on the search set (loss, Ω, fitness) and on the 1,000 held-out "
                  "samples. ρ = Spearman between −fitness and held-out accuracy over the audited "
                  "policies (1 = the fitness ranks policies exactly as held-out accuracy does); "
                  "ρ(loss) is the same for the search loss alone (what η = 0 ranks by). Gap = "
                  "search-set minus held-out accuracy of the chosen (final) model.", "",
                  "| variant | η used | held-out acc % | search acc % | gap (points) | "
                  "ρ(−J, held-out acc) | ρ(−loss, held-out acc) |",
                  "|---|---|---|---|---|---|---|"]
        for g in ABLATION_ORDER:
            rs = [r for r in sel if r["study"]["group"] == g]
            if not rs:
                continue
            etas = [r.get("eta", {}).get("value") for r in rs]
            search_acc = [r["pruned"].get("search", {}).get("accuracy") for r in rs]
            held = [heldout(r) for r in rs]
            gaps = [s - h for s, h in zip(search_acc, held) if s is not None and h is not None]
            rho_j, rho_l = [], []
            for r in rs:
                pols = r.get("audit", {}).get("policies", [])
                acc = [p["heldout_accuracy"] for p in pols]
                rj = spearman([-p["fitness"] for p in pols], acc)
                rl = spearman([-p["search_loss"] for p in pols], acc)
                if rj is not None:
                    rho_j.append(rj)
                if rl is not None:
                    rho_l.append(rl)
            lines.append(f"| {ABLATION_LABEL.get(g, g)} | {fmt(etas, 1, 2)} | {fmt(held)} | "
                         f"{fmt(search_acc)} | {fmt(gaps)} | {fmt(rho_j, 1, 2)} | "
                         f"{fmt(rho_l, 1, 2)} |")
        lines.append("")

    # --- search options (issue 14; scripts/results.sh --phase methods) ---
    sel = [r for r in ok if r["study"]["group"].startswith("method-")]
    if sel:
        lines += ["## Search options (issue 14)", "",
                  "Named configurations of `scripts/results.sh` (METHOD_CONFIGS; "
                  "docs/pruning-engine.md \"Search options\"), held-out accuracy % per budget, "
                  "mean ± sd over seeds; η = the η used; guard = share of runs whose uniform "
                  "guard kept UNIFORM's policy; evals = search.evaluations.", ""]
        for gran in GRAN_ORDER:
            gsel = [r for r in sel if r["study"]["granularity"] == gran]
            if not gsel:
                continue
            budgets = sorted({r["study"]["budget"] for r in gsel}, reverse=True)
            lines += [f"### {gran}", "",
                      "| configuration | " + " | ".join(f"budget {b:g}" for b in budgets) +
                      " | η | guard | evals |",
                      "|---|" + "---|" * (len(budgets) + 3)]
            for name in dict.fromkeys(r["study"]["group"] for r in gsel):
                rs = [r for r in gsel if r["study"]["group"] == name]
                cells = [fmt([heldout(r) for r in rs if r["study"]["budget"] == b])
                         for b in budgets]
                etas = [r.get("eta", {}).get("value") for r in rs]
                fired = [1.0 if r["guard"]["fired"] else 0.0 for r in rs if "guard" in r]
                evals = [r.get("search", {}).get("evaluations") for r in rs]
                lines.append(f"| {name[len('method-'):]} | " + " | ".join(cells) +
                             f" | {fmt(etas, 1, 2, False)} | {fmt(fired, 100, 0, False)} | "
                             f"{fmt(evals, 1, 0, False)} |")
            lines.append("")

    # --- run times ---
    if ok:
        lines += ["## Run time per run (prune-local wall seconds, mean)", "",
                  "| granularity | " + " | ".join(STRATEGY_ORDER) + " |",
                  "|---|" + "---|" * len(STRATEGY_ORDER)]
        for gran in GRAN_ORDER:
            cells = []
            for st in STRATEGY_ORDER:
                ws = [r["study"].get("wall_seconds") for r in ok
                      if r["study"]["granularity"] == gran and r["study"]["strategy"] == st
                      and r["study"]["group"] in ("main", "b10")]
                cells.append(fmt(ws, 1, 0))
            lines.append(f"| {gran} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    with open(out_md + ".tmp", "w") as f:
        f.write(text)
    os.replace(out_md + ".tmp", out_md)
    print(f"wrote {out_md} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
