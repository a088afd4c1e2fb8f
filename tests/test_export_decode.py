"""The export's decoders (camkit.export.decoding) against the path they replace: camkit.load_image
followed by the preset's transform.

- ``pil-jpeg`` (the CPU default): byte-identical model inputs, on the bundled real photos, on JPEGs
  with each EXIF orientation, gray, CMYK, PNG, 16-bit and palette files, and byte-identical export
  files.
- ``nvjpeg`` (CUDA): its code (the bytes read in the workers, one decode_jpeg call per batch, the
  orientation and the transform's steps on tensors) runs here on the CPU; its model inputs are within
  the stated tolerance of the PIL path (torch's antialiased resize is not PIL's), its orientation is
  PIL's exactly, and it is chosen only for a CUDA device with a transform that runs on tensors.

Tolerance of the tensor path (TOL_MAX_LEVELS, TOL_MEAN_LEVELS, in 8-bit grey levels of the image
before normalization): measured on Flower-17 by ``python -m benchmarks.export decode``.
"""
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from camkit.app import load_image, sample_images
from camkit.errors import InputError
from camkit.export import decoding, pipeline
from camkit.export.decoding import (
    Raw,
    choose_decoder,
    decode_batch,
    decode_jpeg,
    jpeg_orientation,
    load_fast,
    orient,
    read_bytes,
    tensor_plan,
)
from camkit.export.pipeline import Decode, on_device
from camkit.export.worklist import Item

TOL_MAX_LEVELS = 8.0  # the tensor path's largest per-pixel difference
TOL_MEAN_LEVELS = 0.5  # its mean difference
STD = 0.25
TF = T.Compose([T.Resize(36, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(),
                T.Normalize([0.5] * 3, [STD] * 3)])


def _photo(h=48, w=64, seed=0):
    """A smooth photo-like RGB array (gradients and a disc), no two corners alike (orientation shows)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    disc = ((yy - 0.3 * h) ** 2 + (xx - 0.7 * w) ** 2 < (h / 4) ** 2)
    a = np.stack([xx * 255 / w, yy * 255 / h, np.where(disc, 230, 40)], -1) + rng.normal(0, 4, (h, w, 3))
    return np.clip(a, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> path: JPEGs with EXIF orientations 1..8, gray, CMYK, PNG (RGB, 16-bit, palette), truncated."""
    d = tmp_path_factory.mktemp("decode")
    rgb = Image.fromarray(_photo())
    out = {}
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        out[f"exif{o}"] = d / f"exif{o}.jpg"
        rgb.save(out[f"exif{o}"], quality=92, exif=exif)
    for name, im, ext in [("gray", rgb.convert("L"), "jpg"), ("cmyk", rgb.convert("CMYK"), "jpg"),
                          ("png", rgb, "png"), ("palette", rgb.convert("P"), "png"),
                          ("png16", Image.fromarray(_photo()[..., 0].astype(np.uint16) * 200), "png")]:
        out[name] = d / f"{name}.{ext}"
        im.save(out[name])
    buf = io.BytesIO()
    Image.fromarray(_photo(160, 200, seed=1)).save(buf, "JPEG")
    out["truncated"] = d / "truncated.jpg"  # cut in the scan data: its header reads, its pixels do not
    out["truncated"].write_bytes(buf.getvalue()[: 3 * len(buf.getvalue()) // 4])
    return out


def _good(files):
    return {k: v for k, v in files.items() if k != "truncated"}


def test_pil_jpeg_gives_load_images_pixels_and_inputs(files, monkeypatch):
    """Every file: the same pixels and byte-identical model inputs; plain JPEGs do not go through
    load_image (the fast path is taken), the others do; a truncated file fails with load_image's error."""
    via = []
    monkeypatch.setattr(decoding, "load_image", lambda p: via.append(Path(p).stem) or load_image(p))
    for name, p in list(_good(files).items()) + [(f"sample {q.name}", q) for q in sample_images()]:
        new, old = load_fast(p), load_image(p)
        assert new.mode == "RGB" and new.size == old.size, name
        assert np.array_equal(np.asarray(new), np.asarray(old)), name
        assert torch.equal(TF(new), TF(old)), name
    assert sorted(via) == ["cmyk", "palette", "png", "png16"]
    with pytest.raises(InputError) as new_err:
        load_fast(files["truncated"])
    with pytest.raises(InputError) as old_err:
        load_image(files["truncated"])
    assert str(new_err.value) == str(old_err.value)


def test_orientation_and_tensor_decoding_follow_pil(files):
    """orient() on torchvision's decode is PIL's exif_transpose exactly (all 8 orientations); the
    header probe takes plain JPEGs only."""
    for o in range(1, 9):
        p = files[f"exif{o}"]
        assert jpeg_orientation(p) == o
        x = orient(decode_jpeg(torch.from_numpy(read_bytes(p))), o)
        assert np.array_equal(x.permute(1, 2, 0).numpy(), np.asarray(load_image(p))), o
    assert jpeg_orientation(files["gray"]) == 1
    assert [jpeg_orientation(files[k]) for k in ("cmyk", "png", "palette", "png16")] == [None] * 4
    assert jpeg_orientation(files["truncated"]) == 1  # its header reads: the decode fails, later


def _levels(a, b):
    d = (a - b).abs() * STD * 255
    return float(d.max()), float(d.mean())


def test_tensor_path_inputs_within_tolerance(files):
    """The CUDA path's code on CPU (one decode_jpeg call for the batch, orientation, the transform's
    steps on tensors) against the PIL path: within TOL_MAX_LEVELS / TOL_MEAN_LEVELS, upright, same size."""
    plan = tensor_plan(TF)
    chelsea = [q for q in sample_images() if q.stem == "chelsea"]  # one real photo (torch's resize is slow on CPU)
    paths = [files[f"exif{o}"] for o in range(1, 9)] + [files["gray"]] + chelsea
    assert len(paths) == 10
    got = decode_batch([Raw(read_bytes(p), jpeg_orientation(p)) for p in paths], plan, "cpu")
    for p, (x, size) in zip(paths, got):
        ref = TF(load_image(p))
        mx, mean = _levels(x, ref)
        assert x.shape == ref.shape and size == load_image(p).size[::-1], p
        assert mx <= TOL_MAX_LEVELS and mean <= TOL_MEAN_LEVELS, (p, mx, mean)
    torn = decode_batch([Raw(read_bytes(files["truncated"]), 1), Raw(read_bytes(paths[0]), 1)], plan, "cpu")
    assert torn[0] is None and torch.equal(torn[1][0], got[0][0])  # a bad file does not sink the batch


def test_decoder_choice():
    """nvjpeg only for a CUDA device and a transform whose every step runs on tensors."""
    lite0_like = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                            T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    assert choose_decoder(torch.device("cuda"), lite0_like) == "nvjpeg"
    assert choose_decoder(torch.device("cuda", 1), lite0_like) == "nvjpeg"
    for dev in ("cpu", "meta"):
        assert choose_decoder(torch.device(dev), lite0_like) == "pil-jpeg"

    class MyResize(T.Resize):  # a subclass may do more than Resize: not trusted on tensors
        pass

    for tf in (T.Compose([T.Lambda(lambda im: im), T.ToTensor()]), T.Compose([MyResize(8), T.ToTensor()]),
               T.Compose([T.Grayscale(3), T.ToTensor()]), lambda im: im):
        assert tensor_plan(tf) is None
        assert choose_decoder(torch.device("cuda"), tf) == "pil-jpeg"
    assert len(tensor_plan(lite0_like)) == 4


def test_nvjpeg_dataset_sends_bytes_of_plain_jpegs_only(files):
    """The workers send a plain JPEG's bytes (decoded on the device by on_device); other files are
    decoded there as before; a file the device cannot decode takes the PIL path and keeps its error."""
    names = ["exif6", "gray", "cmyk", "png", "truncated"]
    ds = Decode([Item(str(files[n]), n) for n in names], TF, "nvjpeg")
    batch = [ds[i] for i in range(len(names))]
    assert [type(b[1]).__name__ for b in batch] == ["Raw", "Raw", "ndarray", "ndarray", "Raw"]
    assert batch[0][1].orientation == 6 and np.array_equal(batch[0][1].data, read_bytes(files["exif6"]))
    done = on_device(batch, ds, tensor_plan(TF), torch.device("cpu"))
    for (_, x, size, err), n in zip(done, names[:4]):
        ref = load_image(files[n])
        assert err is None and size == (ref.height, ref.width)
        assert _levels(torch.as_tensor(x), TF(ref))[0] <= TOL_MAX_LEVELS
    assert done[4][1] is None and done[4][3] == Decode([Item(str(files["truncated"]), "t")], TF, "pil")[0][3]


def _export(src, out, model, decoder, monkeypatch):
    from camkit.app import ExplainSpec, MethodSpec, ModelSpec
    from camkit.export import run

    monkeypatch.setattr(pipeline, "choose_decoder", lambda device, tf: decoder)
    s = run(src, out, ExplainSpec(ModelSpec(model, transform=TF), MethodSpec("gradcam")), workers=0,
            batch_size=4, progress=False)
    assert (s.ok, s.failed) == (4, 1)
    return s


def test_export_outputs_of_new_decoders_against_the_pil_path(files, tmp_path, monkeypatch):
    """pil-jpeg: every output file byte-identical to the PIL path's; nvjpeg's code (on CPU): same
    classes, maps within 0.25 and masks mostly equal (the resize differs by a few grey levels)."""
    import shutil

    from small_models import narrow_resnet18

    from camkit.export import read_cams

    src = tmp_path / "src"
    src.mkdir()
    for n in ("exif6", "gray", "cmyk", "png", "truncated"):
        shutil.copy(files[n], src / files[n].name)
    torch.manual_seed(0)
    model = narrow_resnet18(num_classes=5).eval()
    outs = {d: tmp_path / d for d in ("pil", "pil-jpeg", "nvjpeg")}
    for d, out in outs.items():
        _export(src, out, model, d, monkeypatch)
    files_of = lambda o: sorted(p.relative_to(o) for p in o.rglob("*") if p.is_file() and p.parts[-2] in  # noqa: E731
                                ("cams", "masks"))
    assert files_of(outs["pil"]) == files_of(outs["pil-jpeg"]) and len(files_of(outs["pil"])) == 8
    for rel in files_of(outs["pil"]):
        assert (outs["pil"] / rel).read_bytes() == (outs["pil-jpeg"] / rel).read_bytes(), rel
    for rel in sorted({p.stem for p in (outs["pil"] / "cams").iterdir()}):
        a, b = read_cams(outs["pil"], rel), read_cams(outs["nvjpeg"], rel)
        assert np.array_equal(a["keys"], b["keys"]) and a["high_res"].shape == b["high_res"].shape
        assert np.abs(a["high_res"].astype(np.float32) - b["high_res"].astype(np.float32)).max() <= 0.25, rel


@pytest.mark.slow(reason="decodes all 1360 Flower-17 JPEGs three ways (about 40 s); needs ../shared/flower17")
def test_flower17_inputs_byte_identical_and_tensor_path_within_tolerance():
    root = Path(__file__).resolve().parents[1].parent / "shared" / "flower17" / "jpg"
    paths = sorted(root.glob("*.jpg")) if root.is_dir() else []
    if not paths:
        pytest.skip(f"no Flower-17 JPEGs in {root}")
    from camkit.adapters import build

    tf = build("efficientnet_lite0")[1].transform
    plan = tensor_plan(tf)
    for k in range(0, len(paths), 64):
        chunk = paths[k:k + 64]
        refs = [tf(load_image(p)) for p in chunk]
        assert all(torch.equal(tf(load_fast(p)), r) for p, r in zip(chunk, refs))
        got = decode_batch([Raw(read_bytes(p), jpeg_orientation(p)) for p in chunk], plan, "cpu")
        for (x, _), r in zip(got, refs):
            d = (x - r).abs() * 0.5 * 255
            assert float(d.max()) <= TOL_MAX_LEVELS and float(d.mean()) <= TOL_MEAN_LEVELS


def test_writer_threads_write_the_same_files_and_raise_a_failure(tmp_path):
    """Several writer threads on one queue: the same files, byte for byte, and the same counts as one
    thread; a failure to write in any thread reaches the caller as the disk error naming the file."""
    from camkit.export.manifest import PartLog
    from camkit.export.pipeline import Job, Writer, writer_threads

    rng = np.random.default_rng(0)
    jobs = [Job(Item(f"/x/{k}.jpg", f"d/{k}", None, (1, 1)), size=(40, 30), keys=[k % 3, 4], scores=[1.0, 0.5],
                cam=torch.from_numpy(rng.random((2, 4, 4))).half(),
                maps=torch.from_numpy(rng.random((2, 32, 32)).astype(np.float32))) for k in range(6)]
    jobs[4] = Job(jobs[4].item, error="bad file")
    outs = {}
    for n in (1, 3):
        out = tmp_path / f"w{n}"
        w = Writer(out, PartLog(out / "parts" / "p.jsonl", 0, "r"), 0.3, TF, maxsize=2, num_classes=5)
        w.add_threads(n - 1)
        assert w.thread_count == n
        for j in jobs:
            w.put(j)
        w.close()
        assert (w.ok, w.failed) == (5, 1)
        outs[n] = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and "parts" not in p.parts}
    assert len(outs[1]) == 10 and outs[1] == outs[3]
    (tmp_path / "blocked").write_text("a file where the writer needs a folder")
    w = Writer(tmp_path / "blocked", PartLog(tmp_path / "p2" / "p.jsonl", 0, "r"), 0.3, TF, maxsize=2, num_classes=5)
    w.add_threads(2)
    with pytest.raises(InputError, match="writing"):
        for j in jobs:
            w.put(j)
        w.close()
    assert 1 <= writer_threads(0) <= 8 and writer_threads(10**6) == 1
