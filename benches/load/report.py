#!/usr/bin/env python3
"""Turns the load benchmark's raw results into Markdown: one table per scenario with the median
of every round for each target, and the issue's targets as measured ratios.

Input: results.jsonl (one line per wrk run) and idle.jsonl (one line per proxy in scenario 5),
both written by run.sh. With --progress, formats one result line from stdin instead.
Standard library only.
"""

import json
import statistics
import sys

SCENARIOS = {
    1: "Scenario 1: one token repeated (full pipeline, token cache warm)",
    2: "Scenario 2: a distinct token on every request (RSA on every request)",
    3: "Scenario 3: 10,000 routes loaded",
    4: "Scenario 4: 1,000,000 API keys loaded",
    6: "Scenario 6: scenario 1 with tracing (tollgate alone; spans exported over OTLP/HTTP to the upstream nginx)",
}
# Scenario 6's targets: tollgate with tracing off, and sampling 1% and 100% of requests.
TRACED = {"tollgate": "off", "tollgate-trace-1": "1%", "tollgate-trace-100": "100%"}
WHAT = {
    "upstream": "nginx upstream alone (no proxy)",
    "nginx": "nginx: allow list + limit_req, keep-alive upstream",
    "haproxy": "HAProxy: src ACL + JWT (jwt_verify, iss/exp/scope...) + API key + stick-table",
    "envoy": "Envoy: jwt_authn (JWT cache) + RBAC matcher (peer, claims, API key map) + local_ratelimit",
    "tollgate": "tollgate: policy + JWT + API key with plan + throttle",
}


def load(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def summarize(runs):
    """Medians over the rounds of one target in one scenario."""
    rps = [r["requests"] / (r["duration_us"] / 1e6) for r in runs]
    cpu = [r["cpu_ticks"] * 1e6 / r["clk_tck"] / r["requests"] for r in runs if r["requests"]]
    return {
        "rounds": len(runs),
        "rps": med(rps),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "p50": med([r["p50_us"] / 1000 for r in runs]),
        "p99": med([r["p99_us"] / 1000 for r in runs]),
        "non2xx": sum(r["status"] for r in runs),
        "sockerr": sum(r["connect"] + r["read"] + r["write"] + r["timeout"] for r in runs),
        "rss": med([r["rss_kib"] / 1024 for r in runs]),
        "cpu": med(cpu),
        "hits": sum(r.get("cache_hit", 0) for r in runs),
        "misses": sum(r.get("cache_miss", 0) for r in runs),
        "requests": sum(r["requests"] for r in runs),
        # scenario 6: what was traced, summed over the rounds
        "sampled": sum(r.get("traces_sampled", 0) for r in runs),
        "unsampled": sum(r.get("traces_unsampled", 0) for r in runs),
        "exported": sum(r.get("spans_exported", 0) for r in runs),
        "dropped": sum(r.get("spans_dropped", 0) for r in runs),
        "dropped_queue_full": sum(r.get("spans_dropped_queue_full", 0) for r in runs),
        "dropped_export_failed": sum(r.get("spans_dropped_export_failed", 0) for r in runs),
        "dropped_total": max((r.get("spans_dropped_total", 0) for r in runs), default=0),
    }


def traced_share(v):
    n = v["sampled"] + v["unsampled"]
    return v["sampled"] / n if n else float("nan")


def dropped_text(v):
    if not v["dropped"]:
        return "0"
    return (
        f"**{v['dropped']:,}** (queue full {v['dropped_queue_full']:,}, "
        f"export failed {v['dropped_export_failed']:,})"
    )


def scenario6(s6):
    """Scenario 6's table: tracing off, 1% and 100% side by side, CPU per request against off."""
    out = [
        "| target | sampling | req/s (median) | min–max | p50 ms | p99 ms | non-2xx | socket errors "
        "| RSS MiB | proxy CPU µs/req | CPU/req vs off | traces sampled | spans exported | spans dropped |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    off = s6.get("tollgate")
    for t, sampling in TRACED.items():
        if t not in s6:
            continue
        v = s6[t]
        vs_off = f"{v['cpu'] / off['cpu']:.3f}×" if off else "–"
        traced = (
            f"{v['sampled']:,} of {v['sampled'] + v['unsampled']:,} ({traced_share(v):.2%})"
            if t != "tollgate" else "–"
        )
        exported = f"{v['exported']:,}" if t != "tollgate" else "–"
        dropped = dropped_text(v) if t != "tollgate" else "–"
        out.append(
            f"| {t} | {sampling} | {v['rps']:,.0f} | {v['rps_min']:,.0f}–{v['rps_max']:,.0f} "
            f"| {v['p50']:.2f} | {v['p99']:.2f} | {v['non2xx']} | {v['sockerr']} | {v['rss']:.1f} "
            f"| {v['cpu']:.1f} | {vs_off} | {traced} | {exported} | {dropped} |"
        )
    out.append("")
    notes = []
    for t, sampling in TRACED.items():
        if t == "tollgate" or t not in s6:
            continue
        v = s6[t]
        if off:
            notes.append(
                f"{sampling} sampling: CPU per request {v['cpu'] / off['cpu']:.3f}× tracing off "
                f"({v['cpu']:.1f} vs {off['cpu']:.1f} µs), req/s {v['rps'] / off['rps']:.3f}×, "
                f"p99 {v['p99']:.2f} vs {off['p99']:.2f} ms"
            )
        per_trace = f", {v['exported'] / v['sampled']:.2f} spans per sampled request" if v["sampled"] else ""
        if v["dropped"] or v["dropped_total"]:
            lost = (
                f"**{v['dropped']:,} spans dropped** during the measured runs "
                f"(queue full {v['dropped_queue_full']:,}, export failed {v['dropped_export_failed']:,}), "
                f"{v['dropped_total']:,} since the process started"
            )
        else:
            lost = "none dropped"
        notes.append(f"{sampling} sampling: {v['exported']:,} spans exported{per_trace}; {lost}")
    out += [f"- {n}" for n in notes]
    if notes:
        out.append("")
    return out


def progress():
    """One result line (stdin) as run.sh logs it while running."""
    r = json.loads(sys.stdin.readline())
    print(
        f"{r['requests'] / (r['duration_us'] / 1e6):,.0f} req/s, p50 {r['p50_us'] / 1000:.2f} ms, "
        f"p99 {r['p99_us'] / 1000:.2f} ms, non-2xx {r['status']}, RSS {r['rss_kib'] / 1024:.1f} MiB"
        + (
            f", CPU {r['cpu_ticks'] * 1e6 / r['clk_tck'] / r['requests']:.1f} µs/req, traces sampled "
            f"{r['traces_sampled']} of {r['traces_sampled'] + r['traces_unsampled']}, spans exported "
            f"{r['spans_exported']}, dropped {r['spans_dropped']} (since start {r['spans_dropped_total']})"
            if "traces_sampled" in r and r["requests"] else ""
        )
    )


def main():
    if sys.argv[1:] == ["--progress"]:
        return progress()
    results, idle = load(sys.argv[1]), load(sys.argv[2])
    by = {}
    for r in results:
        by.setdefault(r["scenario"], {}).setdefault(r["target"], []).append(r)
    s = {sc: {t: summarize(runs) for t, runs in ts.items()} for sc, ts in by.items()}
    out = []
    for sc in sorted(s):
        out.append(f"### {SCENARIOS.get(sc, sc)}\n")
        if sc == 6:
            out += scenario6(s[sc])
            continue
        out.append(
            "| target | req/s (median) | min–max | p50 ms | p99 ms | non-2xx | socket errors "
            "| RSS MiB | proxy CPU µs/req | token cache hit/miss |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for t in ("upstream", "nginx", "haproxy", "envoy", "tollgate"):
            if t not in s[sc]:
                continue
            v = s[sc][t]
            cache = f"{v['hits']}/{v['misses']}" if t == "tollgate" else "–"
            rss = f"{v['rss']:.1f}" if t != "upstream" else "–"
            out.append(
                f"| {t} | {v['rps']:,.0f} | {v['rps_min']:,.0f}–{v['rps_max']:,.0f} "
                f"| {v['p50']:.2f} | {v['p99']:.2f} | {v['non2xx']} | {v['sockerr']} | {rss} "
                f"| {v['cpu']:.0f} | {cache} |"
            )
        out.append("")
    if idle:
        out.append("### Scenario 5: idle keep-alive connections held open\n")
        out.append(
            "| target | connections held | failed | non-200 | RSS before MiB | RSS held MiB "
            "| KiB per connection | still open (of checked) |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in idle:
            out.append(
                f"| {r['target']} | {r['connections']} | {r['failed']} | {r['non200']} "
                f"| {r['rss_before_kib'] / 1024:.1f} | {r['rss_held_kib'] / 1024:.1f} "
                f"| {r['per_conn_kib']} | {r['still_open']}/{r['checked']} |"
            )
        out.append("")

    out.append("### The issue's targets, as measured in this run\n")
    out.append("| target | measured | met |")
    out.append("|---|---|---|")

    def row(name, measured, ok):
        out.append(f"| {name} | {measured} | {'yes' if ok else '**no**'} |")

    def get(sc, t):
        return s.get(sc, {}).get(t)

    def times(a, b):
        return f"{a['rps'] / b['rps']:.2f}× ({a['rps']:,.0f} vs {b['rps']:,.0f})"

    tg1, ng1, hp1, ev1 = get(1, "tollgate"), get(1, "nginx"), get(1, "haproxy"), get(1, "envoy")
    if tg1 and ng1:
        ratio = tg1["cpu"] / ng1["cpu"]
        row("S1: tollgate CPU µs/req ≤ 1.4 × nginx's", f"{ratio:.2f}× ({tg1['cpu']:.1f} vs {ng1['cpu']:.1f} µs)", ratio <= 1.4)
    if tg1 and ev1:
        row("S1: tollgate req/s ≥ 2 × Envoy", times(tg1, ev1), tg1["rps"] >= 2 * ev1["rps"])
    if tg1 and hp1:
        row("S1: tollgate req/s ≥ 1.6 × HAProxy", times(tg1, hp1), tg1["rps"] >= 1.6 * hp1["rps"])
    if tg1 and ng1:
        row("S1: tollgate p99 ≤ nginx p99", f"{tg1['p99']:.2f} ms vs {ng1['p99']:.2f} ms", tg1["p99"] <= ng1["p99"])
    tg2, hp2 = get(2, "tollgate"), get(2, "haproxy")
    if tg2 and hp2:
        row("S2: tollgate req/s ≥ 1.3 × HAProxy", times(tg2, hp2), tg2["rps"] >= 1.3 * hp2["rps"])
    for sc in (3, 4):
        tg = get(sc, "tollgate")
        if tg and tg1:
            ratio = tg["rps"] / tg1["rps"]
            row(f"S{sc}: tollgate within 5% of S1", f"{ratio:.3f} of S1 ({tg['rps']:,.0f} vs {tg1['rps']:,.0f})", ratio >= 0.95)
    for r in idle:
        if r["target"] == "tollgate":
            row("S5: tollgate ≤ 4 KiB RSS per idle connection", f"{r['per_conn_kib']} KiB", r["per_conn_kib"] is not None and r["per_conn_kib"] <= 4)
    off6, t1 = get(6, "tollgate"), get(6, "tollgate-trace-1")
    if off6 and t1:
        ratio = t1["cpu"] / off6["cpu"]
        row("S6: tollgate CPU µs/req tracing 1% ≤ 1.05 × tracing off", f"{ratio:.3f}× ({t1['cpu']:.1f} vs {off6['cpu']:.1f} µs)", ratio <= 1.05)
    traced6 = [(t, v) for t, v in ((k, get(6, k)) for k in ("tollgate-trace-1", "tollgate-trace-100")) if v]
    if traced6:
        row(
            "S6: the sampled requests' spans exported, none dropped",
            "; ".join(f"{TRACED[t]}: {v['exported']:,} exported, {v['dropped']:,} dropped" for t, v in traced6),
            all(not v["dropped"] and (v["exported"] or not v["sampled"]) for _, v in traced6),
        )
    bad = [
        f"S{sc} {t}: {v['non2xx']} non-2xx, {v['sockerr']} socket errors"
        for sc in sorted(s)
        for t, v in s[sc].items()
        if v["non2xx"] or v["sockerr"]
    ]
    bad += [f"S5 {r['target']}: {r['non200']} non-200, {r['failed']} failed" for r in idle if r["non200"] or r["failed"]]
    row("zero non-2xx from every target in every scenario", "; ".join(bad) if bad else "none", not bad)
    out.append("")
    # The ratios to Envoy that no target names, beside HAProxy's.
    other = []
    for sc in (2, 3, 4):
        tg, ev = get(sc, "tollgate"), get(sc, "envoy")
        if tg and ev:
            other.append(f"S{sc}: tollgate req/s {times(tg, ev)} Envoy's, CPU µs/req {tg['cpu']:.1f} vs {ev['cpu']:.1f}")
    for r in idle:
        if r["target"] == "envoy":
            other.append(f"S5: Envoy {r['per_conn_kib']} KiB RSS per idle connection")
    if other:
        out.append("Other ratios against Envoy (no target):\n")
        out += [f"- {o}" for o in other]
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
