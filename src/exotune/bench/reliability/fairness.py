"""Work per request and fairness between tokens. A request over the work bound (texts x tokens,
or more labels than max_batch) is refused; then one token sends the heaviest request the
server allows, again and again, while another token's one-text /v1/encode is timed: its
latency must stay within ``FAIR_FACTOR`` times its latency on an idle server."""

from __future__ import annotations

import threading
import time

import numpy as np

FAIR_FACTOR = 10.0  # "a small multiple": one unit of the heavy request, plus its own work
SMALL = {"texts": ["where is my card"]}


def _post(http, url: str, token: str, path: str, body: dict) -> tuple[int, float]:
    t0 = time.perf_counter()
    r = http.post(url + path, json=body, headers={"Authorization": f"Bearer {token}"})
    return r.status_code, time.perf_counter() - t0


def run(server, budget) -> dict:
    import httpx

    light, heavy_token = server.tokens[0], server.tokens[1]
    http = httpx.Client(timeout=600.0)
    info = http.get(server.url + "/v1/spec", headers={"Authorization": f"Bearer {light}"}).json()
    lim, srv = info["spec"]["limits"], info["server"]
    max_batch, max_tokens = lim["max_batch"], srv["max_tokens_per_request"]
    max_length = min(lim["max_length"], info["spec"].get("text_max_length") or lim["max_length"])  # a text's tokens
    over_labels = http.post(
        server.url + "/v1/scores",
        json={"texts": ["a"], "labels": ["label"] * (max_batch + 1)},
        headers={"Authorization": f"Bearer {light}"},
    ).status_code
    # the heaviest request allowed: max_batch texts that each tokenize to max_length tokens or more
    heaviest = {"texts": [("word " * max_length)[: 5 * max_length]] * max(1, min(max_batch, max_tokens // max_length))}
    over_tokens = http.post(
        server.url + "/v1/encode", json={"texts": heaviest["texts"] * 2}, headers={"Authorization": f"Bearer {light}"}
    ).status_code
    idle = [_post(http, server.url, light, "/v1/encode", SMALL) for _ in range(budget.fairness_samples)]

    heavy: list[tuple[int, float]] = []
    stop = threading.Event()

    def flood() -> None:
        with httpx.Client(timeout=600.0) as own:
            while not stop.is_set():
                heavy.append(_post(own, server.url, heavy_token, "/v1/encode", heaviest))

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    time.sleep(0.5)  # the heavy request is under way
    loaded = []
    for _ in range(budget.fairness_samples):
        loaded.append(_post(http, server.url, light, "/v1/encode", SMALL))
        time.sleep(0.1)
    stop.set()
    thread.join(timeout=900)
    http.close()

    idle_ms = [s * 1000 for c, s in idle if c == 200]
    loaded_ms = [s * 1000 for c, s in loaded if c == 200]
    heavy_s = [s for c, s in heavy if c == 200]
    ratio = (float(np.median(loaded_ms)) / float(np.median(idle_ms))) if idle_ms and loaded_ms else None
    problems = []
    if over_labels != 422 or over_tokens != 422:
        problems.append(f"over the work bound: labels HTTP {over_labels}, tokens HTTP {over_tokens} (want 422)")
    if len(idle_ms) < len(idle) or len(loaded_ms) < len(loaded) or len(heavy_s) < len(heavy):
        problems.append(
            f"refused: idle {[c for c, _ in idle]}, loaded {[c for c, _ in loaded]}, heavy {[c for c, _ in heavy]}"
        )
    if ratio is None or ratio > FAIR_FACTOR:
        problems.append(
            f"a small request took {ratio} x its idle latency behind the heavy one (at most {FAIR_FACTOR:g})"
        )
    return {
        "ok": not problems,
        "problems": problems,
        "max_tokens_per_request": max_tokens,
        "fair_unit_tokens": srv.get("fair_unit_tokens"),
        "heaviest_request": f"{len(heaviest['texts'])} texts x {max_length} tokens",
        "heavy_requests": len(heavy),
        "heavy_seconds_median": round(float(np.median(heavy_s)), 2) if heavy_s else None,
        "idle_ms": [round(x, 1) for x in idle_ms],
        "loaded_ms": [round(x, 1) for x in loaded_ms],
        "idle_median_ms": round(float(np.median(idle_ms)), 1) if idle_ms else None,
        "loaded_median_ms": round(float(np.median(loaded_ms)), 1) if loaded_ms else None,
        "slowdown": None if ratio is None else round(ratio, 2),
        "slowdown_bound": FAIR_FACTOR,
        "over_bound_status": {"labels": over_labels, "tokens": over_tokens},
    }


def figure(section: dict, path) -> bool:
    """Latency of the small request, idle and behind the heaviest request (a strip per case)."""
    from exotune.plotting import pyplot

    plt = pyplot()
    if plt is None or not section.get("idle_ms"):
        return False
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for x, key in ((0, "idle_ms"), (1, "loaded_ms")):
        ys = section.get(key) or []
        ax.scatter([x] * len(ys), ys, alpha=0.6)
        if ys:
            ax.hlines(float(np.median(ys)), x - 0.2, x + 0.2, color="black")
    ax.set_xticks([0, 1], ["idle", "behind the heaviest\nrequest of another token"])
    ax.set_ylabel("one-text /v1/encode, ms")
    ax.set_title(f"fairness: {section.get('slowdown')}x idle (bound {section.get('slowdown_bound'):g}x)")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
