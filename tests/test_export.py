"""camkit export / evaluate-masks: one process vs torchrun, resume, a killed rank, corrupt images,
labels with several classes, the mask rule, evaluation on synthetic data with known answers.

The model is the default architecture (timm tf_efficientnet_lite0) with random weights saved to a
file, so every process loads the same model; 17 small images plus a corrupt one.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from camkit import cli
from camkit.app import ExplainSpec, MethodSpec, ModelSpec
from camkit.export import (
    Item,
    list_images,
    merge_manifest,
    output_paths,
    rank_batches,
    read_cams,
    share,
    write_outputs,
)

SETTINGS = ["--method", "gradcam", "--topk", "2"]
N_OK = 17  # good images; with the corrupt one 18 images, in 9 batches of BATCH: 5 for rank 0 (10 images) and
BATCH = 2  # 4 for rank 1 (8 images), not an even split of batches nor of images
ARGS = SETTINGS + ["--batch-size", str(BATCH), "--workers", "1", "--no-progress"]
OUT_FILES = ("cams", "masks", "manifest.jsonl")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import timm

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "lite0_random.pt"
    torch.save(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict(), path)
    return str(path)


def _make_images(root: Path, n: int = N_OK) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / ("a" if i < 12 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        h, w = [(40, 56), (48, 48), (60, 44)][i % 3]
        yy, xx = np.mgrid[0:h, 0:w]
        blob = (((yy - h * rng.random()) ** 2 + (xx - w * rng.random()) ** 2) < (h / 4) ** 2)[..., None]
        arr = np.where(blob, rng.integers(0, 255, 3), (rng.random((h, w, 3)) * 255)).astype(np.uint8)
        Image.fromarray(arr).save(sub / f"img{i:02d}.{'png' if i % 4 == 0 else 'jpg'}")
    (root / "b" / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    _make_images(root)
    return root


def _export(src, out, weights, *extra):
    return cli.main(["export", str(src), "--out", str(out), "--weights", weights, "--threads", "1", *ARGS, *extra])


@pytest.fixture(scope="module")
def reference(src, weights, tmp_path_factory):
    """One process, one thread: the run every other run must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "out"
    rc = _export(src, out, weights)
    return out, rc


def _files(out: Path):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                  if p.is_file() and p.relative_to(out).parts[0] in OUT_FILES)


def _records(out: Path, drop=("run", "rank", "path", "stat")):  # stat: the copy's file times
    recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    for r in recs:
        if r.get("error") and "path" in drop:
            r["error"] = r["error"].replace(r["path"], "<path>")  # the image's path depends on SRC
    return [{k: v for k, v in r.items() if k not in drop} for r in recs]


def _assert_same_outputs(a: Path, b: Path):
    """The same files, byte for byte (same batches and threads: the same float sums), the same records."""
    assert _files(a) == _files(b)
    for rel in _files(a):
        if rel.startswith(("cams/", "masks/")):
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert _records(a) == _records(b)


#: Thread settings of the caller's environment that would change a rank's float sums (torchrun sets
#: OMP_NUM_THREADS=1 only when it is unset): the ranks get one thread, as the reference run, whatever they say.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _torchrun(*args, **kw):
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV and k != "CAMKIT_DEBUG"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "camkit",
           "export", *map(str, args), "--threads", "1"]  # the reference's threads (_export)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def test_reference_run_records_the_corrupt_image(reference, capsys):
    out, rc = reference
    assert rc == 1  # one image failed
    recs = _records(out, drop=())
    assert len(recs) == N_OK + 1 and [r["rel"] for r in recs] == sorted(r["rel"] for r in recs)
    bad = [r for r in recs if r["status"] == "error"]
    assert [r["rel"] for r in bad] == ["b/zz_corrupt"] and bad[0]["error"].startswith("cannot read image ")
    assert not output_paths(out, "b/zz_corrupt")[0].exists()
    ok = [r for r in recs if r["status"] == "ok"]
    assert len(ok) == N_OK and all(len(r["keys"]) == 2 and r["error"] is None for r in ok)


def test_outputs_shapes_geometry_and_mask_rule(reference, src):
    out, _ = reference
    for rec in _records(out, drop=()):
        if rec["status"] != "ok":
            continue
        z = read_cams(out, rec["rel"])
        img = Image.open(next(src.glob(rec["rel"] + ".*")))
        assert z["keys"].dtype == np.int64 and z["keys"].tolist() == rec["keys"]
        assert z["cam"].dtype == np.float16 and z["cam"].shape == (2, 7, 7)  # bn2 of Lite0 at 224 input
        assert z["high_res"].dtype == np.float16 and z["high_res"].shape == (2, img.height, img.width)
        h = z["high_res"].astype(np.float64)
        assert h.min() >= 0 and h.max() <= 1
        mask = Image.open(output_paths(out, rec["rel"])[1])
        assert mask.mode.startswith("I")  # 1000 ImageNet classes do not fit a palette: 16-bit grayscale
        # the rule, written out: background where both maps are below 0.15, else 1 + the stronger one's class
        k0, k1 = rec["keys"]
        want = np.where((h[0] < 0.15) & (h[1] < 0.15), 0, np.where(h[1] > h[0], 1 + k1, 1 + k0))
        np.testing.assert_array_equal(np.asarray(mask), want)


def _descendant_with_rank(root_pid: int, rank: int):
    """The shallowest process under root_pid whose environment says LOCAL_RANK=rank (not its loader workers)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    level = [root_pid]
    while level:
        nxt = [c for c, par in parents.items() if par in level]
        for pid in nxt:
            try:
                if f"LOCAL_RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    return pid
            except OSError:
                pass
        level = nxt
    return None


@pytest.mark.skipif(not Path("/proc").is_dir() or not hasattr(os, "mkfifo"), reason="needs /proc and FIFOs")
def _rank_rels(part: Path):
    return [json.loads(line)["rel"] for line in part.read_text().splitlines()]


def test_torchrun_killed_rank_then_the_rerun_matches_one_process(reference, src, weights, tmp_path, capsys):
    """On two processes (torchrun), rank 1 blocks on an image that is a FIFO (deterministically mid-run)
    and is SIGKILLed: each rank had done its own contiguous run of whole batches, rank 0 never merged. The
    rerun writes only what is missing, leaves the finished files alone, and gives the one-process
    reference's files byte for byte: no image twice, none lost. (One torchrun launch: each costs ~10 s
    of CPU in interpreter starts; the full two-process run is timed in benchmarks/export.)"""
    ref, _ = reference
    src2 = tmp_path / "src"
    shutil.copytree(src, src2)
    rels = [r["rel"] for r in _records(ref, drop=())]
    batches = [[rels[i] for b in rank_batches(len(rels), BATCH, rank, 2) for i in b] for rank in (0, 1)]
    assert [len(b) for b in batches] == [10, 8]
    stuck = batches[1][2 * BATCH]  # rank 1 finishes 2 batches, then waits on this one
    real = next(src2.glob(stuck + ".*"))
    real.unlink()
    os.mkfifo(real)
    out = tmp_path / "out"
    p = _torchrun(src2, "--out", out, "--weights", weights, *ARGS)
    try:
        deadline = time.time() + 180
        lines = 0
        while lines < 2 * BATCH and time.time() < deadline and p.poll() is None:
            time.sleep(0.05)
            part = next((out / "parts").glob("*.rank1.jsonl"), None) if (out / "parts").is_dir() else None
            lines = len(part.read_text().splitlines()) if part else 0
        assert lines == 2 * BATCH, p.communicate(timeout=30)
        pid = _descendant_with_rank(p.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    finally:
        try:  # let the loader worker blocked on the FIFO see EOF
            os.close(os.open(real, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        p.communicate(timeout=120)
    assert p.returncode != 0
    assert not (out / "manifest.jsonl").exists()  # rank 0 never merged
    parts = sorted((out / "parts").glob("*.jsonl"))
    assert [q.name.split(".rank")[1] for q in parts] == ["0.jsonl", "1.jsonl"]
    got0, got1 = (_rank_rels(q) for q in parts)
    assert got1 == batches[1][:2 * BATCH] and got0 == batches[0][:len(got0)]  # each rank its own batches, in order
    done_before = {rel for rel in rels if output_paths(out, rel)[1].exists()}
    assert stuck not in done_before and batches[1][-1] not in done_before
    real.unlink()
    shutil.copy(next(src.glob(stuck + ".*")), real)
    mtimes = {rel: output_paths(out, rel)[0].stat().st_mtime_ns for rel in done_before}
    capsys.readouterr()
    assert _export(src2, out, weights) == 1  # the corrupt image
    done = len(done_before)
    assert f"{N_OK + 1} images, {N_OK} ok ({N_OK - done} computed, {done} already done), 1 failed" in \
        capsys.readouterr().out
    assert {rel: output_paths(out, rel)[0].stat().st_mtime_ns for rel in done_before} == mtimes
    _assert_same_outputs(ref, out)  # the two ranks' files and one process's, byte for byte
    assert not list(out.rglob("*.camkit-tmp"))


def test_resume_recomputes_only_missing_outputs(reference, src, weights, tmp_path, capsys):
    ref, _ = reference
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    rels = [r["rel"] for r in _records(ref, drop=()) if r["status"] == "ok"]
    gone = {rels[0]: (0,), rels[7]: (1,), rels[15]: (0, 1)}  # the npz, the png, both
    for rel, which in gone.items():
        for k in which:
            output_paths(out, rel)[k].unlink()
    kept = [p for rel in rels if rel not in gone for p in output_paths(out, rel)]
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in kept}
    capsys.readouterr()
    assert _export(src, out, weights) == 1
    assert f"{N_OK + 1} images, {N_OK} ok (3 computed, {N_OK - 3} already done), 1 failed" in capsys.readouterr().out
    after = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in before}
    assert after == before  # the other images' files are not touched
    _assert_same_outputs(ref, out)


def test_rerun_with_other_settings_is_refused(reference, src, weights, tmp_path, capsys):
    ref, _ = reference
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    capsys.readouterr()
    rc = cli.main(["export", str(src), "--out", str(out), "--weights", weights, *ARGS, "--threads", "1",
                   "--bg-threshold", "0.3"])
    assert rc == 2
    assert "other settings (bg_threshold)" in capsys.readouterr().err


def test_labels_with_several_classes_per_image(src, weights, tmp_path, threads):
    """Labels by index and by name (with spaces), 1-3 per image, one with none: keys in increasing
    class order (camkit.targets.MultiLabel, ReCAM's keys); each map equals camkit's own LayerCAM for
    that class alone, put back on the photo; the model is left as found."""
    import timm

    from camkit import LayerCAM
    from camkit.adapters import resolve
    from camkit.export import run
    from camkit.geometry import to_original

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(torch.load(weights))
    model.train()
    model.conv_stem.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.modules()]
    preset = resolve(model)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,labels\n"
                   f"{src}/a/img00.png,tench;great white shark\n"
                   f"{src}/a/img01.jpg,9 5 7\n"
                   f"{src}/a/img02.jpg,goldfish\n"
                   f"{src}/a/img03.jpg,\n")
    lst = tmp_path / "list.txt"
    lst.write_text("# four images\n" + "".join(f"{src}/a/img0{i}.{'png' if i == 0 else 'jpg'}\n" for i in range(4)))
    out = tmp_path / "out"
    threads(1)  # the reference below too: LayerCAM's sums depend on the thread count
    summary = run(lst, out, ExplainSpec(ModelSpec(model), MethodSpec("layercam")), labels=csv, bg_threshold=0.4,
                  batch_size=4, workers=0, progress=False)
    assert (summary.ok, summary.failed, summary.computed) == (4, 0, 4)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert flags == [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.modules()]
    want = {"img00": [0, 2], "img01": [5, 7, 9], "img02": [1], "img03": []}
    with LayerCAM(model, layers=list(preset.layers)) as cam:
        for name, keys in want.items():
            z = read_cams(out, f"{name}")
            assert z["keys"].tolist() == keys
            img = Image.open(next(src.glob(f"a/{name}.*"))).convert("RGB")
            assert z["high_res"].shape == (len(keys), img.height, img.width)
            x = preset.transform(img)[None]
            for k, c in enumerate(keys):
                res = cam(x, targets=[c])
                high = to_original(res.maps[0, :1], (img.height, img.width), preset.transform)
                np.testing.assert_allclose(z["high_res"][k].astype(np.float32), high[0].numpy(), atol=2e-3)
            mask = np.asarray(Image.open(output_paths(out, name)[1]))
            h = z["high_res"].astype(np.float64)
            expect = (np.where(h.max(axis=0) >= 0.4, np.asarray(keys)[h.argmax(axis=0)] + 1, 0) if keys
                      else np.zeros(mask.shape))
            np.testing.assert_array_equal(mask, expect)
    recs = {r["rel"]: r for r in _records(out, drop=())}
    assert recs["img01"]["keys"] == [5, 7, 9] and len(recs["img01"]["scores"]) == 3


def test_labels_from_the_command_line(src, weights, tmp_path, capsys):
    """`camkit export LIST --labels CSV`: each image's keys are its labels (names or indices), in class order."""
    lst = tmp_path / "list.txt"
    lst.write_text(f"{src}/a/img01.jpg\n{src}/a/img02.jpg\n")
    csv = tmp_path / "labels.csv"
    csv.write_text(f"path,labels\n{src}/a/img01.jpg,goldfish;0\n{src}/a/img02.jpg,7\n")
    out = tmp_path / "out"
    assert _export(lst, out, weights, "--labels", str(csv)) == 0
    assert "2 ok" in capsys.readouterr().out
    assert read_cams(out, "img01")["keys"].tolist() == [0, 1]
    assert read_cams(out, "img02")["keys"].tolist() == [7]


def test_bad_arguments_name_the_problem(src, weights, tmp_path, capsys):
    for extra, msg in ((["--device", "gpu0"], "'gpu0' is not a device"), (["--topk", "0"], "argument --topk: must be >= 1"),
                       (["--bg-threshold", "1.5"], "must lie in [0, 1]"), (["--normalize", "none"], "not available")):
        assert cli.main(["export", str(src), "--out", str(tmp_path / "o"), "--weights", weights, *extra]) == 2
        assert msg in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli.main(["export", str(src), "--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
        assert "no CUDA GPU is available" in capsys.readouterr().err


def test_labels_errors_name_the_problem(src, weights, tmp_path, capsys):
    csv = tmp_path / "labels.csv"
    csv.write_text(f"{src}/a/img00.png,tench;great white sharc\n{src}/a/img01.jpg,1\n")
    lst = tmp_path / "list.txt"
    lst.write_text(f"{src}/a/img00.png\n{src}/a/img01.jpg\n")
    rc = cli.main(["export", str(lst), "--out", str(tmp_path / "o"), "--weights", weights, "--labels", str(csv),
                   "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "'great white sharc' is neither a class index nor a class name" in err
    assert "did you mean 'great white shark'" in err
    csv.write_text(f"{src}/a/img00.png,3\n")
    rc = cli.main(["export", str(lst), "--out", str(tmp_path / "o"), "--weights", weights, "--labels", str(csv),
                   "--threads", "1"])
    assert rc == 2 and "has no row for 1 of 2 images" in capsys.readouterr().err


_KILLED_MID_WRITE = """
import os, signal, sys
import numpy as np
from camkit import export
real = np.lib.format.write_array
def write_half_then_die(f, a, **kw):
    if a.ndim == 3 and a.shape[1] > 2:  # high_res, after keys and cam: half of it, then SIGKILL
        f.write(np.ascontiguousarray(a).tobytes()[: a.nbytes // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(f, a, **kw)
np.lib.format.write_array = write_half_then_die
h = np.random.default_rng(0).random((2, 50, 70)).astype(np.float16)
export.write_outputs(sys.argv[1], "sub/img", np.array([1, 4]), h[:, :2, :2], h, 0.5, num_classes=5)
"""


def test_a_process_killed_mid_write_leaves_no_output(tmp_path):
    """Outputs are renamed into place only once complete: SIGKILL half-way through the .npz leaves
    no .npz and no .png under their final names (only the temporary file, removed by the next run)."""
    p = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, str(tmp_path)], capture_output=True)
    assert p.returncode == -signal.SIGKILL
    npz, png = output_paths(tmp_path, "sub/img")
    assert not npz.exists() and not png.exists()
    assert [q.name.endswith(".camkit-tmp") for q in (tmp_path / "cams" / "sub").iterdir()] == [True]


def test_list_images_folder_and_list(tmp_path):
    (tmp_path / "d" / "s").mkdir(parents=True)
    for name in ("d/b.jpg", "d/a.PNG", "d/s/c.jpeg", "d/notes.txt", "d/.hidden.jpg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d" / "out" / "masks").mkdir(parents=True)
    (tmp_path / "d" / "out" / "masks" / "a.png").write_bytes(b"")
    got = list_images(tmp_path / "d", exclude=tmp_path / "d" / "out")
    assert [r for _, r in got] == ["a", "b", "s/c"]
    lst = tmp_path / "list.csv"
    lst.write_text("path\n# comment\nd/s/c.jpeg\n\nd/b.jpg,extra\n")
    assert list_images(lst) == [(str(tmp_path / "d/s/c.jpeg"), "s/c"), (str(tmp_path / "d/b.jpg"), "b")]
    (tmp_path / "d" / "b.png").write_bytes(b"")
    with pytest.raises(ValueError, match="would write the same outputs"):
        list_images(tmp_path / "d", exclude=tmp_path / "d" / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files in folder"):
        list_images(tmp_path / "empty")


@given(n=st.integers(0, 300), world=st.integers(1, 9))
def test_shares_are_disjoint_contiguous_and_complete(n, world):
    parts = [share(n, r, world) for r in range(world)]
    assert [i for p in parts for i in p] == list(range(n))
    sizes = [len(p) for p in parts]
    assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= 1


@given(n=st.integers(0, 300), batch=st.integers(1, 17), world=st.integers(1, 9))
def test_ranks_take_whole_batches_of_the_one_process_run(n, batch, world):
    one = rank_batches(n, batch, 0, 1)
    assert [list(b) for r in range(world) for b in rank_batches(n, batch, r, world)] == [list(b) for b in one]
    assert all(len(b) == batch for b in one[:-1]) and [i for b in one for i in b] == list(range(n))


# --------------------------------------------------------------------------- evaluate-masks

def _synthetic_export(tmp_path):
    """Two images with known maps and ground truth; values exact in float16."""
    out, gt = tmp_path / "exp", tmp_path / "gt"
    gt.mkdir()
    # image 1: class 3 on the left half (0.75), background right (0.0): perfect for any t <= 0.75
    m1 = np.zeros((1, 4, 6))
    m1[0, :, :3] = 0.75
    g1 = np.zeros((4, 6), np.uint8)
    g1[:, :3] = 4
    # image 2: classes 0 and 2. Rows 0-1: class 0 at 0.75 (truth 1); row 2: ignore; rows 3-4: class 2 at 0.375
    # (truth 3); row 5: background with class 0 at 0.125 (a false positive for t <= 0.125)
    m2 = np.zeros((2, 6, 5))
    m2[0, 0:2] = 0.75
    m2[1, 3:5] = 0.375
    m2[0, 5] = 0.125
    g2 = np.zeros((6, 5), np.uint8)
    g2[0:2], g2[2], g2[3:5] = 1, 255, 3
    for rel, keys, m, g in (("one", [3], m1, g1), ("sub/two", [0, 2], m2, g2)):
        write_outputs(out, rel, np.array(keys), m, m, threshold=0.15, num_classes=4)
        (gt / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(g).save(gt / f"{rel}.png")
    merge_manifest(out, [Item("one.jpg", "one"), Item("sub/two.jpg", "sub/two")])
    (out / "export.json").write_text(json.dumps({"categories": ["c0", "c1", "c2", "c3"]}))  # 4 classes + background
    return out, gt


def test_evaluate_masks_known_answers(tmp_path, capsys):
    out, gt = _synthetic_export(tmp_path)
    js = tmp_path / "r.json"
    assert cli.main(["evaluate-masks", str(out), "--gt", str(gt), "--sweep", "0.05:0.95:0.05", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    printed = capsys.readouterr().out
    # t = 0.05, 0.1: row 5 of image 2 (5 background pixels) predicted class 1
    #   background: TP 12 + 0 = 12, truth 12 + 5 = 17, predicted 12 -> IoU 12/17, precision 1, recall 12/17
    #   class 1: TP 10, truth 10, predicted 15 -> IoU 10/15;  class 3: IoU 1;  class 4: IoU 1
    assert res["miou"][0] == pytest.approx((12 / 17 + 10 / 15 + 1 + 1) / 4)
    assert res["miou"][1] == res["miou"][0]
    # 0.15 .. 0.35: all right; 0.4 .. 0.75: class 3 lost (10 pixels to background)
    assert res["miou"][2:7] == [1.0] * 5
    assert res["miou"][7] == pytest.approx((17 / 27 + 1 + 0 + 1) / 4)
    # above 0.75 everything is background: only background has a non-zero IoU
    assert res["miou"][-1] == pytest.approx((17 / 49 + 0 + 0 + 0) / 4)
    assert res["best"]["threshold"] == pytest.approx(0.15) and res["best"]["miou"] == 1.0
    assert res["best"]["precision"][:5] == [1.0, 1.0, None, 1.0, 1.0] and res["images"] == 2
    assert "mIoU 1.0000 at threshold 0.15" in printed
    # without a sweep: the masks as written (threshold 0.15), same answer; one threshold given: its answer
    assert cli.main(["evaluate-masks", str(out), "--gt", str(gt), "--json", str(js)]) == 0
    assert json.loads(js.read_text())["miou"] == [1.0]
    assert cli.main(["evaluate-masks", str(out), "--gt", str(gt), "--threshold", "0.1", "--json", str(js)]) == 0
    r = json.loads(js.read_text())["best"]
    assert r["iou"][:2] == [pytest.approx(12 / 17), pytest.approx(10 / 15)] and r["recall"][0] == pytest.approx(12 / 17)
    # --ignore: the same ground truth with 200 where it had 255 gives the same answers only when told so
    g = np.asarray(Image.open(gt / "sub/two.png")).copy()
    g[g == 255] = 200
    Image.fromarray(g).save(gt / "sub/two.png")
    sweep = ["--sweep", "0.05:0.95:0.05", "--json", str(js)]
    assert cli.main(["evaluate-masks", str(out), "--gt", str(gt), "--ignore", "200", *sweep]) == 0
    assert json.loads(js.read_text())["miou"] == res["miou"]
    js.unlink()
    assert cli.main(["evaluate-masks", str(out), "--gt", str(gt), *sweep]) == 2  # 200 is no class of 5
    assert "label 200, outside 0..4" in capsys.readouterr().err and not js.exists()


def test_evaluate_masks_errors(tmp_path, capsys):
    out, gt = _synthetic_export(tmp_path)
    assert cli.main(["evaluate-masks", str(tmp_path / "nothing"), "--gt", str(gt)]) == 2
    assert "manifest.jsonl not found" in capsys.readouterr().err
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(gt / "one.png")
    assert cli.main(["evaluate-masks", str(out), "--gt", str(gt)]) == 2
    assert "one: prediction of shape (4, 6) but ground truth of shape (3, 3)" in capsys.readouterr().err
