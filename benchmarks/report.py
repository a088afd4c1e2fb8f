"""How long ``camkit report`` takes, and how the page responds, at 1360 and 50,000 images.

    python -m benchmarks.report                              # all phases (~5 min on 2 cores)
    python -m benchmarks.report --draw-images 64 --sizes 1360 5000 --no-browser   # a quick look
    python -m benchmarks.report --export DIR                  # draw the thumbnails of a real export

Phases:

- ``draw``: an export folder of the 1360 Flower-17 photos (``../shared/flower17/jpg``; their own
  JPEGs, decoded as the report decodes them) with synthetic maps at each photo's size (a Gaussian bump,
  written by ``camkit.export.write_outputs`` as ``camkit export`` writes them), or ``--export DIR``;
  ``build_report`` once (every thumbnail drawn) and again (every one reused), wall time each.
- ``page``: synthetic manifests of N records (``--sizes``, default 1360 and 50,000: 17 classes, a
  score, a foreground share, one metric), the thumbnails' index as an earlier report leaves it, no image
  files; ``build_report(thumbnails=False)``: reading the manifest, the summary and the page, wall time
  and page size.
- ``browser`` (chromium, chromedriver and selenium present): each page loaded from ``file://`` in
  headless chromium; the time from navigation to the first page of cards, and in the page
  (``performance.now()``) the time to sort by foreground share, filter by a class, search by name and
  turn the page, each including the re-render.

Results: ``benchmarks/results/report/report.md`` and ``.json``, with the command, commit, date,
torch version, device, cores and load average.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from benchmarks.harness import markdown_table, run_provenance, write_results

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "report"
FLOWERS = REPO.parent / "shared" / "flower17" / "jpg"
CLASSES = [f"flower {i:02d}" for i in range(17)]


def synthetic_export(root: Path, photos: Sequence[Path]) -> Path:
    """An export folder of ``photos`` with a Gaussian bump per photo, at its size (as ``camkit export``
    writes them: npz, mask PNG, manifest, export.json)."""
    from PIL import Image

    from camkit.export.files import write_outputs

    rng = np.random.default_rng(0)
    recs = []
    for i, p in enumerate(photos):
        with Image.open(p) as im:
            w, h = im.size
        c = i // 80 if len(photos) == 1360 else int(rng.integers(0, 17))
        y, x = np.mgrid[0:h, 0:w]
        cy, cx, s = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.08, 0.3)
        high = np.exp(-(((y / h - cy) ** 2) + ((x / w - cx) ** 2)) / (2 * s * s)).astype(np.float32)[None]
        rel = f"{CLASSES[c].replace(' ', '_')}/{p.stem}"
        write_outputs(root, rel, np.array([c]), high[:, ::16, ::16], high, 0.15, len(CLASSES))
        recs.append({"path": str(p), "rel": rel, "status": "ok", "keys": [c], "scores": [float(rng.normal(8, 2))],
                     "size": [h, w], "error": None})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    settings = {"model": "synthetic", "method": "layercam", "labels": None, "topk": 1, "categories": CLASSES}
    (root / "export.json").write_text(json.dumps({"settings": settings, "categories": CLASSES}))
    return root


def synthetic_manifest(root: Path, n: int) -> Path:
    """``n`` manifest records (1% failed) and the thumbnails' index an earlier report would leave."""
    from camkit.report.runs import Row

    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    lines, index = [], {}
    for i in range(n):
        c = int(rng.integers(0, 17))
        rel = f"{CLASSES[c].replace(' ', '_')}/image_{i:06d}"
        if i % 100 == 99:
            lines.append(json.dumps({"path": f"/data/{rel}.jpg", "rel": rel, "status": "error", "keys": [],
                                     "error": "cannot read the image: truncated file"}))
            continue
        lines.append(json.dumps({"path": f"/data/{rel}.jpg", "rel": rel, "status": "ok", "keys": [c],
                                 "scores": [round(float(rng.normal(8, 2)), 4)], "size": [500, 600], "error": None,
                                 "iou": round(float(rng.uniform()), 4)}))
        index[Row(name=rel, photo=None).key] = {"n": [1], "fg": round(float(rng.beta(2, 5)), 4), "agree": None,
                                                "photo": True, "notes": [], "sig": None}
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    settings = {"model": "synthetic", "method": "layercam", "labels": None, "topk": 1, "categories": CLASSES}
    (root / "export.json").write_text(json.dumps({"settings": settings, "categories": CLASSES}))
    (root / "report_files").mkdir(exist_ok=True)
    (root / "report_files" / "index.json").write_text(json.dumps(index))
    return root


def draw_phase(export: Path, workers: int) -> Dict[str, Any]:
    from camkit.report import build_report

    first = build_report(export, workers=workers, argv=["report", str(export)])
    again = build_report(export, workers=workers, argv=["report", str(export)])
    files = list((export / "report_files").rglob("*.jpg"))
    return {"images": first.images, "workers": workers, "first_s": round(first.seconds, 2),
            "drawn": first.drawn, "per_image_ms": round(1000 * first.seconds / max(1, first.drawn), 1),
            "rerun_s": round(again.seconds, 3), "reused": again.reused, "thumbnail_files": len(files),
            "thumbnail_mb": round(sum(f.stat().st_size for f in files) / 2**20, 1)}


def page_phase(root: Path) -> Dict[str, Any]:
    from camkit.report import build_report

    t = time.perf_counter()
    rep = build_report(root, thumbnails=False, argv=["report", str(root), "--no-thumbnails"])
    return {"images": rep.images, "seconds": round(time.perf_counter() - t, 3),
            "html_mb": round(rep.path.stat().st_size / 2**20, 2)}


ACTIONS = {  # run in the page; each returns the milliseconds until the new cards are in the DOM
    "sort by foreground share": "var s=document.getElementById('sort'); s.value='fg';"
                                "s.dispatchEvent(new Event('change'));",
    "filter by a class": "var s=document.getElementById('f-pred'); s.value='3'; s.dispatchEvent(new Event('change'));",
    "search by name": "var q=document.getElementById('q'); q.value='image_01'; q.dispatchEvent(new Event('input'));",
    "next page": "document.getElementById('f-pred').value='-1';"
                 "document.getElementById('f-pred').dispatchEvent(new Event('change'));"
                 "document.getElementById('q').value='';"
                 "document.getElementById('q').dispatchEvent(new Event('input'));"
                 "var t0=performance.now(); document.getElementById('next').click(); return performance.now()-t0;",
}


def browser_phase(pages: Dict[int, Path]) -> Optional[Dict[str, Any]]:
    """Load each page in headless chromium; None without chromium, chromedriver or selenium."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        return None
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    out: Dict[str, Any] = {"chromium": None}
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        out["chromium"] = driver.capabilities.get("browserVersion")
        for n, page in pages.items():
            t = time.perf_counter()
            driver.get(page.resolve().as_uri())
            while driver.execute_script("return document.body.dataset.ready") != "1":
                time.sleep(0.01)
            row: Dict[str, Any] = {"load_s": round(time.perf_counter() - t, 3)}
            for name, js in ACTIONS.items():
                if "return" not in js:
                    js = f"var t0=performance.now(); {js} return performance.now()-t0;"
                row[name + " ms"] = round(float(driver.execute_script(js)), 1)
            row["cards shown"] = len(driver.find_elements("css selector", "#grid .card"))
            out[str(n)] = row
    finally:
        driver.quit()
    return out


def screenshot(page: Path, out: Path, width: int = 1400, height: int = 1000) -> None:
    """A PNG of the page as headless chromium shows it from ``file://`` (the first screen)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=opts)
    try:
        driver.get(page.resolve().as_uri())
        while driver.execute_script("return document.body.dataset.ready") != "1":
            time.sleep(0.01)
        seen = ("return [...document.images].filter(i => i.getBoundingClientRect().top < innerHeight)"
                ".every(i => i.complete && i.naturalWidth > 0)")
        end = time.time() + 10
        while not driver.execute_script(seen) and time.time() < end:  # the lazy thumbnails on the first screen
            time.sleep(0.05)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def _body(draw: Optional[Dict[str, Any]], pages: Dict[int, Dict[str, Any]], browser: Optional[Dict[str, Any]]) -> str:
    parts = []
    if draw:
        parts.append("## Thumbnails (drawn once, then reused)\n\n" + markdown_table(
            ["images", "workers", "first run s", "ms per image", "rerun s", "reused", "files", "MB"],
            [[draw["images"], draw["workers"], draw["first_s"], draw["per_image_ms"], draw["rerun_s"],
              draw["reused"], draw["thumbnail_files"], draw["thumbnail_mb"]]]))
    parts.append("## The page (manifest, summary, HTML; thumbnails already made)\n\n" + markdown_table(
        ["images", "seconds", "report.html MB"], [[n, p["seconds"], p["html_mb"]] for n, p in pages.items()]))
    if browser:
        keys = [k for k in next(v for k, v in browser.items() if k != "chromium")]
        parts.append(f"## In the browser (headless chromium {browser['chromium']}, from file://)\n\n" + markdown_table(
            ["images", *keys], [[n, *[browser[str(n)][k] for k in keys]] for n in pages]))
    else:
        parts.append("Browser phase skipped: chromium, chromedriver or selenium not found.")
    return "\n\n".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1360, 50000], help="synthetic manifest sizes")
    ap.add_argument("--draw-images", type=int, default=1360, help="Flower-17 photos in the draw phase (0: none)")
    ap.add_argument("--export", help="a real export folder to draw instead of the synthetic one (left as found "
                    "but for its report.html and report_files/)")
    ap.add_argument("--workers", type=int, default=1, help="processes drawing the thumbnails")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--screenshot", metavar="PNG", help="with --export: a screenshot of its report (docs/report.png)")
    ap.add_argument("--out", default=str(RESULTS / "report.md"))
    args = ap.parse_args(argv)
    prov = run_provenance(sys.argv[1:] if argv is None else argv, "benchmarks.report")
    with tempfile.TemporaryDirectory(prefix="camkit-report-bench-") as tmp:
        draw = None
        if args.export:
            draw = draw_phase(Path(args.export), args.workers)
            if args.screenshot:
                screenshot(Path(args.export) / "report.html", Path(args.screenshot))
        elif args.draw_images:
            photos = sorted(FLOWERS.glob("*.jpg"))[: args.draw_images]
            if not photos:
                raise SystemExit(f"no Flower-17 photos in {FLOWERS}; give --export DIR or --draw-images 0")
            draw = draw_phase(synthetic_export(Path(tmp) / "draw", photos), args.workers)
        roots = {n: synthetic_manifest(Path(tmp) / f"page{n}", n) for n in args.sizes}
        pages = {n: page_phase(r) for n, r in roots.items()}
        browser = None if args.no_browser else browser_phase({n: r / "report.html" for n, r in roots.items()})
    body = _body(draw, pages, browser)
    md, js = write_results(args.out, prov, "camkit report: generation time and page response", body,
                           {"draw": draw, "pages": pages, "browser": browser})
    print(body)
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
