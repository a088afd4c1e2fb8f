"""``camkit report`` without a browser: the page's content, escaping, relative links, thumbnails made
once and reused, explain runs, the command line (the page in chromium: tests/test_report_browser.py)."""
from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image
from report_fixtures import BROKEN, CLASSES, ERROR, IMAGES, make_export

from camkit.cli import main
from camkit.cli.explain_records import Records
from camkit.report import build_report
from camkit.report.thumbs import agreement


def _data(page: Path) -> dict:
    m = re.search(r'<script type="application/json" id="camkit-data">(.*?)</script>', page.read_text(), re.S)
    assert m is not None
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    photos = tmp / "photos"
    a = make_export(tmp / "cams_layercam", photos)
    b = make_export(tmp / "cams_gradcam", photos, method="gradcam", shift=0.2)
    first = build_report(a, [b], labels=photos / "labels.csv")
    return tmp, a, b, first


def test_the_page_is_self_contained_and_holds_every_image(built):
    _, a, _, rep = built
    page = rep.path.read_text()
    assert rep.path == a / "report.html" and rep.images == len(IMAGES) + 1 and rep.failed == 1
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)      # no CDN, no remote anything
    assert "<link rel=\"stylesheet\"" not in page and "<script src" not in page
    assert page.count("<script") == 2 and page.count("</script>") == 2   # the data block and the script
    d = _data(rep.path)
    assert [r[0] for r in d["rows"]] == [r for r, _, _ in IMAGES] + [BROKEN]
    assert d["methods"] == ["layercam", "gradcam"] and d["classes"] == CLASSES
    assert [r[2] for r in d["rows"][:-1]] == [[t] for _, t, _ in IMAGES]    # truth: the labels file
    assert [r[3] for r in d["rows"][:-1]] == [[p] for _, _, p in IMAGES]    # predicted: the export's keys
    assert d["metrics"] == ["iou"] and d["rows"][3][7] == [pytest.approx(0.3)]
    for (rel, _, _), row in zip(IMAGES, d["rows"]):  # foreground share: the mask PNG's non-zero pixels
        assert row[5] == pytest.approx((np.asarray(Image.open(a / "masks" / f"{rel}.png")) > 0).mean(), abs=1e-4)


def test_the_summary_counts_classes_histograms_and_lists_failures(built):
    _, _, _, rep = built
    page = rep.path.read_text()
    table = re.search(r'<table class="t" id="class-counts">(.*?)</table>', page, re.S).group(1)
    rows = re.findall(r"<tr><td>(.*?)</td><td class=\"n\">(\d*)</td><td class=\"n\">(\d*)</td></tr>", table)
    got = {html.unescape(n): (int(t or 0), int(p or 0)) for n, t, p in rows}
    want = {c: (sum(t == i for _, t, _ in IMAGES), sum(p == i for _, _, p in IMAGES)) for i, c in enumerate(CLASSES)}
    assert got == want
    fgs = [r[5] for r in _data(rep.path)["rows"] if r[5] is not None]
    counts = [int(c) for c in re.findall(r"<title>[0-9.]+-[0-9.]+: (\d+)</title>", page)]
    assert counts == np.histogram(fgs, bins=20, range=(0, 1))[0].tolist()
    assert html.escape(ERROR) in page and "<img src=x" not in page    # the error shown as text
    assert '<dt>method</dt><dd>layercam</dd>' in page and "3 classes" in page   # run settings
    assert "<dt>camkit</dt>" in page and "<dt>command</dt>" in page              # how the page was made


def test_odd_names_are_data_never_markup(built):
    _, _, _, rep = built
    page = rep.path.read_text()
    for odd in [r for r, _, _ in IMAGES if set(r) & set("<>&\"")] + [CLASSES[1]]:
        assert odd not in page  # escaped in the JSON block (< > & as \\u escapes), the script sets them as text
    assert "alert(1)</script>" not in page and "<b>" not in page
    assert html.escape(CLASSES[1]) in page  # in the filter's options, escaped


def test_thumbnail_links_are_relative_and_exist(built):
    _, a, _, rep = built
    d = _data(rep.path)
    assert d["files"] == "report_files"
    for r in d["rows"][:-1]:
        key = r[8]
        views = [f"m{m}" for m in range(2)] + [f"m{m}k0" for m in range(2)] + ["mask", "maskL", "photo"]
        for v in views:  # the script's src(): files/KEY[:2]/KEY.VIEW.jpg, relative to the page
            assert (a / d["files"] / key[:2] / f"{key}.{v}.jpg").is_file(), (r[0], v)
        assert re.fullmatch(r"[0-9a-f]{16}", key)  # whatever the image's name
    with Image.open(a / "report_files" / d["rows"][0][8][:2] / f"{d['rows'][0][8]}.m0.jpg") as im:
        assert max(im.size) <= 176


def test_thumbnails_are_made_once_and_reused(built):
    tmp, a, b, first = built
    assert first.drawn == len(IMAGES) and first.reused == 0
    files = sorted((a / "report_files").rglob("*.jpg"))
    stamps = [p.stat().st_mtime_ns for p in files]
    again = build_report(a, [b], labels=tmp / "photos" / "labels.csv")
    assert (again.drawn, again.reused) == (0, len(IMAGES))
    assert [p.stat().st_mtime_ns for p in files] == stamps and _data(again.path)["rows"] == _data(first.path)["rows"]
    npz = b / "cams" / f"{IMAGES[2][0]}.npz"  # one source changes: that image alone is drawn again
    os.utime(npz, ns=(npz.stat().st_atime_ns, npz.stat().st_mtime_ns + 10**9))
    third = build_report(a, [b], labels=tmp / "photos" / "labels.csv")
    assert (third.drawn, third.reused) == (1, len(IMAGES) - 1)


def test_agreement_is_the_mean_pairwise_correlation():
    rng = np.random.default_rng(1)
    m = [rng.random((32, 32)) for _ in range(3)]
    pairs = [np.corrcoef(m[i].ravel(), m[j].ravel())[0, 1] for i, j in ((0, 1), (0, 2), (1, 2))]
    assert agreement(m) == pytest.approx(np.mean(pairs), abs=1e-6)
    assert agreement(m[:1]) is None and agreement([m[0], np.ones((32, 32))]) == 0.0


def _explain_folder(root: Path) -> Path:
    """An explain run's folder: overlays with odd names and its explain.jsonl (as camkit explain writes it)."""
    rec = Records(root, {"model": "tiny", "categories": None})
    rng = np.random.default_rng(0)
    for key in ("sub dir/a #1", "b%c"):
        for m in ("layercam", "gradcam"):
            for k, name in enumerate(["cat <x>", "dog"]):
                p = root / f"{key}_{m}_{k + 1}-{name[:3]}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(p)
                rec.add_file(m, name, p)
        rec.image(f"/photos/{key}.jpg", key, "dog", [("cat <x>", 0.7), ("dog", 0.2)])

    class Out:  # the one method of Outputs that Records uses
        def __init__(self):
            self.root = root

        def write(self, path, save):
            save(path)

    rec.write(Out(), [("/photos/bad.jpg", "cannot read /photos/bad.jpg")])
    return root


def test_an_explain_run_shows_its_methods_classes_and_links(tmp_path):
    root = _explain_folder(tmp_path / "out")
    d = _data(build_report(root).path)
    assert d["methods"] == ["layercam", "gradcam"] and sorted(d["classes"]) == ["cat <x>", "dog"]
    row, name = d["rows"][0], d["classes"].__getitem__
    assert row[0] == "sub dir/a #1" and row[4] == 0.7 and row[9] == [2, 2]
    assert [name(c) for c in row[2]] == ["dog"] and [name(c) for c in row[3]] == ["cat <x>", "dog"]
    assert row[12][0] == ["sub%20dir/a%20%231_layercam_1-cat.png", "sub%20dir/a%20%231_layercam_2-dog.png"]
    for link in row[12][0] + row[12][1] + d["rows"][1][12][0]:
        assert (root / unquote(link)).is_file() and not link.startswith("/")
    assert d["rows"][2][0] == "/photos/bad.jpg" and d["rows"][2][1] == 0 and "cannot read" in d["rows"][2][13]
    assert row[6] is None  # no maps saved: no agreement
    maps = {m: np.random.default_rng(i).random((32, 32)).astype(np.float32) for i, m in enumerate(d["methods"])}
    for m, arr in maps.items():  # --save-maps: each overlay's map beside it, as .npy
        np.save(root / f"sub dir/a #1_{m}_1-cat.npy", arr)
    d = _data(build_report(root).path)
    want = np.corrcoef(maps["layercam"].ravel(), maps["gradcam"].ravel())[0, 1]
    assert d["rows"][0][6] == pytest.approx(want, abs=1e-4) and d["rows"][1][6] is None
    (root / "explain.jsonl").unlink()  # an older run: the overlay file names alone
    d = _data(build_report(root).path)
    assert sorted(r[0] for r in d["rows"]) == ["b%c", "sub dir/a #1"] and sorted(d["methods"]) == ["gradcam",
                                                                                                  "layercam"]
    assert d["rows"][0][9] == [2, 2]


def test_the_command_line(tmp_path, capsys, built):
    _, a, _, _ = built
    assert main(["report", str(a), "--page-size", "10", "--no-thumbnails"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("camkit report: 9 images (1 failed); thumbnails: 0 made") and _data(a / "report.html")[
        "pageSize"] == 10
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("camkit: error: ") and "holds no camkit output" in err[0]
    assert main(["report", str(a), "--cmap", "nosuchmap"]) == 2
    assert main(["report", str(a), "--compare", str(tmp_path)]) == 2


def test_evaluate_values_become_sortable_metrics(tmp_path, built):
    """camkit evaluate's evaluation.json: per image and method, its values; in an export folder they join the
    export's rows (by image path), alone they make the rows."""
    _, a, _, _ = built
    recs = [json.loads(line) for line in (a / "manifest.jsonl").read_text().splitlines()]
    per = [{"image": r["path"], "method": "gradcam", "class": 1, "road_morf": 0.5 - 0.1 * i, "sparseness": 2.0}
           for i, r in enumerate(recs[:3])]
    blob = {"settings": {"model": "tiny", "metric": ["road"]}, "summary": {}, "per_image": per}
    (a / "evaluation.json").write_text(json.dumps(blob))
    try:
        d = _data(build_report(a, thumbnails=False).path)
    finally:
        (a / "evaluation.json").unlink()
    assert d["metrics"] == ["gradcam road_morf", "gradcam sparseness", "iou"]
    assert [r[7][0] for r in d["rows"][:4]] == [0.5, 0.4, pytest.approx(0.3), None]
    alone = tmp_path / "eval"
    alone.mkdir()
    (alone / "evaluation.json").write_text(json.dumps(blob))
    Image.new("RGB", (4, 4)).save(alone / "road.png")  # its curves: not overlays
    d = _data(build_report(alone).path)
    assert [r[0] for r in d["rows"]] == [r["path"] for r in recs[:3]] and d["rows"][0][3] == [1]
    assert '<dt>model</dt><dd>tiny</dd>' in (alone / "report.html").read_text()
