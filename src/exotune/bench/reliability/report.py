"""reliability.md: the summary first, then one short table per section."""

from __future__ import annotations


def _v(x, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def markdown(doc: dict) -> str:
    s, sec = doc["summary"], doc["sections"]
    load, soak, fuzz, access, faults = (sec.get(k, {}) for k in ("load", "soak", "fuzz", "access", "faults"))
    lines = [
        f"# reliability{' (quick)' if doc['quick'] else ''}",
        "",
        f"`{doc['command']}`",
        "",
        f"{doc['date']}, {doc['machine']}, backbone {doc['backbone']}; server and clients on 127.0.0.1, "
        f"on the same cores; {doc['seconds']:.0f} s in all.",
        "",
    ]
    if doc.get("load_average"):
        start, end = doc["load_average"]
        lines += [
            f"Latency and throughput depend on what else the machine runs: its load average was {start:.1f} "
            f"when the run began and {end:.1f} when it ended, on {doc.get('cpus', '?')} cores.",
            "",
        ]
    if doc.get("note"):
        lines += [doc["note"], ""]
    lines += [
        "| question | answer |",
        "|---|---|",
        f"| everything held | **{'yes' if doc['ok'] else 'NO'}** |",
        f"| load held ({load.get('clients')} concurrent clients, {load.get('steps')} training steps) | "
        f"{'yes' if s['load_held'] else 'no'}: {load.get('failed', 'n/a')} failed requests, gradients within "
        f"{_v(load.get('max_relative_gradient_error'), 1) if load.get('max_relative_gradient_error') is None else format(load['max_relative_gradient_error'], '.1e')} "
        f"of a local reference |",
        f"| soak held ({_v(soak.get('seconds'), 0)} s) | {'yes' if s['soak_held'] else 'no'}: server memory "
        f"{_v(soak.get('rss_start_mb'))} -> {_v(soak.get('rss_end_mb'))} MB, handles at most "
        f"{soak.get('handles_max')} (bound {soak.get('handles_bound')}), file descriptors {soak.get('fds_before')} -> "
        f"{soak.get('fds_after')} |",
        f"| bad inputs tried | {s['bad_inputs_tried']} ({_gen(fuzz)}): {_classes(fuzz)} |",
        f"| 5xx answers | {s['server_errors_5xx']} |",
        f"| access checks | {access.get('checks', 0) - len(access.get('failed', []))}/{access.get('checks', 0)} held |",
        f"| image box (pixels) | {_pixels(sec.get('pixels', {}))} |",
        f"| faults survived | {s['faults_survived']} |",
        f"| data lost | {s['data_lost'] if isinstance(s['data_lost'], str) else '; '.join(s['data_lost'])} |",
        f"| tampered folders | {s.get('tampered_folders', 'not measured')} |",
        "",
    ]
    lines += [
        "## Load",
        "",
        "| clients | steps each | batch | steps/s | requests/s | request p50 ms | request p99 ms | "
        "step p50 ms | step p99 ms | failed | retries | replays |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {load.get('clients')} | {load.get('steps_per_client')} | {load.get('batch_size')} | {_v(load.get('steps_per_s'), 2)} | "
        f"{_v(load.get('requests_per_s'), 2)} | {_v(load.get('p50_ms'))} | {_v(load.get('p99_ms'))} | "
        f"{_v(load.get('step_p50_ms'))} | {_v(load.get('step_p99_ms'))} | {load.get('failed')} | {load.get('retries')} | "
        f"{load.get('replays')} |",
        "",
        "Each client trains its own DGA adapter (AdamW) on its own batches; a step is embed + forward + "
        "backward (3 requests). Gradients are compared with the same client trained alone on the local box, "
        "step by step.",
        "",
    ]
    lines += [
        "## Soak",
        "",
        "| seconds | clients | trained steps | abandoned forwards | garbage refused | "
        "unexpected failures | RSS start -> end MB (max) | slope MB/min | handles max / bound | after ttl | fds before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {_v(soak.get('seconds'), 0)} | {soak.get('clients')} | {soak.get('trained')} | {soak.get('abandoned_forwards')} | "
        f"{soak.get('garbage_refused')} | {soak.get('unexpected_failures')} | {_v(soak.get('rss_start_mb'))} -> "
        f"{_v(soak.get('rss_end_mb'))} ({_v(soak.get('rss_max_mb'))}) | {_v(soak.get('rss_slope_mb_per_min'), 2)} | "
        f"{soak.get('handles_max')} / {soak.get('handles_bound')} | {soak.get('handles_after_ttl')} | "
        f"{soak.get('fds_before')} -> {soak.get('fds_after')} |",
        "",
        "RSS start and end are the server's resident memory after warm-up (the first 40% of the run) and at "
        f"the end, allowed to differ by {_v(soak.get('memory_tolerance_mb'))} MB; handles and descriptors are "
        "counted again once the clients are gone and the handle ttl has passed.",
    ]
    if soak.get("outside_handles_mb"):
        lo, hi = soak["outside_handles_mb"]
        lines += [
            f"RSS less the bytes held by the handle store (the graphs kept for backward) stayed within "
            f"{_v(lo)} - {_v(hi)} MB after warm-up (slope {_v(soak.get('outside_handles_slope_mb_per_min'), 2)} "
            "MB/min): what RSS does beyond that follows the number of handles held."
        ]
    lines += [""]
    lines += [
        "## Bad input",
        "",
        f"Routes: {', '.join(fuzz.get('operations', []))}. After fuzzing: health "
        f"{fuzz.get('health_after')}, gradient vs local reference {_e(fuzz.get('relative_gradient_error_after'))}.",
        "",
    ]
    lines += [
        "## Access",
        "",
        f"{access.get('checks', 0)} checks over {', '.join(access.get('routes', []))}; every "
        "answer also checked for backbone names and foreign tensors.",
        "",
        f"- 401 for {access.get('credentials_refused', 'n/a')}; `/v1/health` open, saying only ok",
    ]
    lines += [f"- {c}" for c in access.get("checked", [])] + [""]
    lines += ["## Faults", "", "| drill | held | detail |", "|---|---|---|"]
    for d in faults.get("drills", []):
        lines.append(f"| {d['drill']} | {'yes' if d['ok'] else '**no**'} | {_detail(d)} |")
    lines += [""] + _attacks(sec)
    problems = [
        (k, v)
        for k, v in sec.items()
        if v.get("problems") or v.get("failed") and isinstance(v.get("failed"), list) or v.get("error")
    ]
    if problems:
        lines += ["", "## Problems", ""]
        for k, v in problems:
            for p in (
                (v.get("problems") or [])
                + (v.get("failed") if isinstance(v.get("failed"), list) else [])
                + ([v["error"]] if v.get("error") else [])
            ):
                lines.append(f"- {k}: {str(p)[:300]}")
    return "\n".join(lines) + "\n"


def _e(x) -> str:
    return "n/a" if x is None else f"{x:.1e}"


def _pixels(p: dict) -> str:
    if not p:
        return "not measured"
    return (
        f"{'held' if p.get('ok') else 'FAILED'}: {p.get('checks', 0) - len(p.get('failed', []))}/{p.get('checks', 0)} "
        f"access checks, {p.get('cases', 0)} bad pixel payloads ({_classes(p)}), gradient after "
        f"{format(p['relative_gradient_error_after'], '.1e') if 'relative_gradient_error_after' in p else 'n/a'}"
    )


def _gen(fuzz: dict) -> str:
    g = fuzz.get("by_generator", {})
    return f"schemathesis {g.get('openapi', 0)}, hypothesis payloads {g.get('payloads', 0)}, edge cases {g.get('edges', 0)}"


def _classes(fuzz: dict) -> str:
    c = fuzz.get("status_classes", {})
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"


def _detail(d: dict) -> str:
    if d["drill"].startswith("server killed"):
        return (
            f"server SIGKILLed on backward {d.get('server_killed_on_backward')}; client: `{d.get('client_error', '')[:90]}`; "
            f"checkpoint at step {d.get('checkpoint_step')}; resumed to {d.get('steps_resumed')}/{d.get('steps_reference')} "
            f"steps, weights within {_e(max((d.get('max_weight_difference') or {}).values(), default=None))}"
        )
    if d["drill"].startswith("black box"):
        return f"once: {d.get('once')}; for good: {str(d.get('persistent'))[:110]}"
    if d["drill"].startswith("probing crash"):
        return (
            f"killed at request {d.get('killed_at_request')}; {d.get('stored_before_kill')} answers stored; rerun asked "
            f"{d.get('asked_on_rerun')}, of them stored before: {d.get('stored_asked_again')}, in flight at the kill: "
            f"{d.get('in_flight_asked_again')}"
        )
    parts = [d["api"][:120]] if d.get("api") else []
    parts += [f"CLI: `{d['cli'][:100]}`"] if d.get("cli") else []
    return "; ".join(parts)


def _held(section: dict) -> str:
    return "yes" if section.get("ok") else "**no**"


def _attacks(sec: dict) -> list[str]:
    """Work per request and fairness, slow connections, concurrent admission, abandonment."""
    fair, slow, adm, ab = (sec.get(k, {}) for k in ("fairness", "slow", "admission", "abandon"))
    return [
        "## Attacks",
        "",
        "| attack | held | figures |",
        "|---|---|---|",
        f"| one token's heaviest allowed request ({fair.get('heaviest_request')}, {_v(fair.get('heavy_seconds_median'), 2)} s) "
        f"vs another token's one-text encode | {_held(fair)} | {_v(fair.get('idle_median_ms'))} ms idle, "
        f"{_v(fair.get('loaded_median_ms'))} ms behind it: {_v(fair.get('slowdown'), 2)}x (bound {_v(fair.get('slowdown_bound'))}x; "
        f"units of {fair.get('fair_unit_tokens')} tokens); over the work bound: {fair.get('over_bound_status')} |",
        f"| {slow.get('slow_heads')} slow-loris heads, a trickled body, a flood of {slow.get('flood')} connections "
        f"(cap {slow.get('max_connections')}) | {_held(slow)} | heads cut after {_v(slow.get('slow_heads_cut_after_s'))} s "
        f"(timeout {_v(slow.get('header_timeout_s'))} s), health answered {slow.get('health_answered_during')}; body: "
        f"{slow.get('trickled_body')} after {_v(slow.get('trickled_body_cut_after_s'))} s; flood: {slow.get('closed_on_accept')} "
        f"closed on accept, {slow.get('closed_after_head_timeout')} closed after the head timeout; descriptors {slow.get('fds_before')} -> "
        f"{slow.get('fds_peak')} -> {slow.get('fds_after')} |",
        f"| {adm.get('clients')} concurrent training forwards x {adm.get('rounds')} ({adm.get('batch')}, "
        f"~{_v(adm.get('graph_estimate_mb'))} MB each) under a {_v(adm.get('handle_bound_mb'))} MB bound | {_held(adm)} | "
        f"{adm.get('admitted')} admitted, {adm.get('refused_busy')} refused busy (503); store at most "
        f"{_v(adm.get('handle_mb_max'))} MB; RSS rose {_v(adm.get('rss_rise_mb'))} MB (allowed {_v(adm.get('rss_rise_allowed_mb'))}) |",
        f"| {ab.get('abandoned_forwards')} forwards made for training, never backpropagated | {_held(ab)} | RSS "
        f"{_v(ab.get('rss_before_mb'))} -> {_v(ab.get('rss_peak_mb'))} (peak) -> {_v(ab.get('rss_after_ttl_mb'))} MB after the "
        f"ttl ({_v(ab.get('rss_after_share'), 3)}x, bound {ab.get('rss_bound_share')}x); handles after: {ab.get('handles_after_ttl')} |",
        "",
        "Figure: `reliability_fairness.png` (the small request's latencies, idle and behind the heavy one).",
        "",
    ]
