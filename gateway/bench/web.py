"""First load of the web dashboard's fleet map in a real headless Chromium (Debian's, driven
by Playwright; a test dependency), each repetition in a fresh browser context (cold cache),
against a running installation: bytes shipped per kind, the time from navigation until the
page is ready and until its first vehicle marker is drawn (measured in the page), then the
lag of the live updates over ``--watch`` seconds (a position's sample time to the moment the
page applied it: unit, broker, ingest commit, the feed's poll and the stream together).

    TELEMATICS_BENCH_PASSWORD=... python -m gateway.bench.web --api http://127.0.0.1:8080 \\
        --email fleet@demo.local --reps 3

docs/decisions/0019-web-dashboard.md records its figures.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

__all__ = ["first_load"]

_CHROMIUM = "/usr/bin/chromium"


def _one(browser: Any, api: str, email: str, password: str, watch_s: float) -> dict[str, Any]:
    context = browser.new_context()
    try:
        r = context.request.post(
            f"{api}/v1/auth/session",
            data=json.dumps({"email": email, "password": password}),
            headers={"Content-Type": "application/json"},
        )
        if r.status != 200:
            raise SystemExit(f"cannot log in as {email}: {r.status} {r.text()}")
        page = context.new_page()
        page.goto(f"{api}/")
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_selector("path.vehicle-marker")
        page.wait_for_timeout(watch_s * 1000)  # live updates arrive meanwhile
        stats = page.evaluate(
            "() => ({ready: tgStats.readyMs, marker: tgStats.firstMarkerMs, lags: tgStats.lags})"
        )
        # bytes as received (encoded body) by kind, from the page's own resource timing;
        # the live streams never complete, so they are not in it
        sizes = page.evaluate(
            """() => {
              const out = {document: performance.getEntriesByType('navigation')[0].encodedBodySize};
              for (const e of performance.getEntriesByType('resource')) {
                if (e.name.includes('/stream')) continue;
                out[e.initiatorType] = (out[e.initiatorType] || 0) + e.encodedBodySize;
              }
              return out;
            }"""
        )
        heap = page.evaluate("() => performance.memory ? performance.memory.usedJSHeapSize : null")
        lags = sorted(stats["lags"])
        return {
            "ready_ms": stats["ready"],
            "first_marker_ms": stats["marker"],
            "bytes": sizes,
            "updates": len(lags),
            "lag_p50_ms": lags[len(lags) // 2] if lags else None,
            "lag_p99_ms": lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else None,
            "js_heap_bytes": heap,
        }
    finally:
        context.close()


def first_load(
    api: str, email: str, password: str, reps: int, watch_s: float = 10.0
) -> list[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            return [_one(browser, api, email, password, watch_s) for _ in range(reps)]
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument("--email", default="fleet@demo.local")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--watch", type=float, default=10.0, help="seconds of live updates")
    args = parser.parse_args()
    password = os.environ.get("TELEMATICS_BENCH_PASSWORD", "")
    runs = first_load(args.api, args.email, password, args.reps, args.watch)
    for i, run in enumerate(runs, 1):
        total = sum(run["bytes"].values())
        print(
            f"rep {i}: ready {run['ready_ms']:.0f} ms, first marker {run['first_marker_ms']:.0f} "
            f"ms after navigation; {total} bytes {run['bytes']}; {run['updates']} live updates, "
            f"lag p50 {run['lag_p50_ms']} ms p99 {run['lag_p99_ms']} ms; "
            f"JS heap {run['js_heap_bytes']} bytes"
        )
    marker = [r["first_marker_ms"] for r in runs]
    print(f"first marker: worst {max(marker):.0f} ms, spread {max(marker) - min(marker):.0f} ms")
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main()
