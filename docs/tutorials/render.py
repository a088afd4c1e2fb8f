"""Render the tutorials into Markdown pages with their printed output and their pictures.

    python docs/tutorials/render.py            # every tutorial -> docs/tutorials/rendered/NN_name.md
    python docs/tutorials/render.py 05 07      # some of them

Each tutorial runs as tests/test_tutorials.py runs it: cell by cell in one namespace, in a scratch
folder, but with the real models (the offline EfficientNet-Lite0; the random-weight torchvision models
the tutorials ask for). A page holds each markdown cell as text, each code cell as a Python block, what
the cell printed (and the warnings raised at its lines), and its pictures: the images the cell wrote
into the scratch folder or, when it wrote none, the value of its last line if that is a picture (a PIL
image, or anything with ``_repr_png_`` such as a ``CAMResult``). Pictures are shrunk to at most
``MAX_WIDTH`` pixels wide and saved as palette PNGs of ``COLOURS`` colours into ``rendered/NN_name/``
(GIFs as written), so that the pages stay small. A cell that raises stops the tutorial's page (exit
status 1).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

os.environ.setdefault("MPLBACKEND", "Agg")  # before anything imports matplotlib

import torch  # noqa: E402
from PIL import Image  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "rendered"
MAX_WIDTH = 560
COLOURS = 256
PICTURES = (".png", ".jpg", ".jpeg", ".gif")


def cells(text: str) -> List[Tuple[str, str]]:
    """A percent-format script's cells as ``(kind, source)``, kind ``"markdown"`` (its text, the
    leading ``# `` removed) or ``"code"``; the jupytext header and empty cells left out."""
    parts = re.split(r"^# %%(.*)$", text, flags=re.M)
    out = []
    for marker, body in zip(parts[1::2], parts[2::2]):
        body = body.strip("\n")
        if not body.strip():
            continue
        if "[markdown]" in marker:
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in body.splitlines()]
            out.append(("markdown", "\n".join(lines).strip()))
        else:
            out.append(("code", body.rstrip()))
    return out


def run_cell(source: str, ns: Dict[str, Any], name: str) -> Tuple[str, Any]:
    """Execute one code cell in ``ns``; returns what it printed (with the warnings raised at its own
    lines) and the value of its last line when that is an expression (else None)."""
    tree = ast.parse(source, name)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(tree, name, "exec"), ns)
        value = eval(compile(ast.Expression(last.value), name, "eval"), ns) if last is not None else None
    shown = [f"{w.category.__name__}: {w.message}\n" for w in caught if w.filename == name]
    return printed.getvalue() + "".join(shown), value


def small_png(image: Image.Image, path: Path) -> None:
    """``image`` at most MAX_WIDTH wide, as a palette PNG of COLOURS colours."""
    image = image.convert("RGB")
    if image.width > MAX_WIDTH:
        image = image.resize((MAX_WIDTH, max(1, round(image.height * MAX_WIDTH / image.width))), Image.LANCZOS)
    image.quantize(colors=COLOURS, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def as_picture(value: Any) -> Optional[Image.Image]:
    """A cell's value as a PIL image, when it is a picture."""
    if isinstance(value, Image.Image):
        return value
    png = getattr(value, "_repr_png_", None)
    if callable(png):
        data = png()
        return Image.open(io.BytesIO(data)) if data else None
    return None


def _files(folder: Path) -> Dict[str, Tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in PICTURES}


def _pictures(scratch: Path, before: Dict[str, Tuple[int, int]], value: Any, pics: Path, k: int) -> List[str]:
    """Copies of the pictures a cell wrote (or of its value), under ``pics``; their names."""
    after = _files(scratch)
    names = []
    for name in sorted(n for n in after if before.get(n) != after[n]):
        src = scratch / name
        if src.suffix.lower() == ".gif":
            shutil.copyfile(src, pics / name)
        else:
            name = Path(name).stem + ".png"
            with Image.open(src) as im:
                small_png(im, pics / name)
        names.append(name)
    picture = as_picture(value) if not names else None
    if picture is not None:
        names.append(f"cell{k}.png")
        small_png(picture, pics / names[-1])
    return names


def _provenance() -> str:
    import camkit

    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=HERE, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return f"camkit {getattr(camkit, '__version__', '?')} at commit {commit}, torch {torch.__version__}, {day}"


def _close_figures() -> None:
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def render(path: Path, out: Path = OUT) -> Path:
    """Run the tutorial at ``path`` and write ``out/<stem>.md`` and its pictures in ``out/<stem>/``."""
    pics = out / path.stem
    shutil.rmtree(pics, ignore_errors=True)
    pics.mkdir(parents=True)
    note = (f"*Rendered by `python docs/tutorials/render.py` from [`{path.name}`](../{path.name}) "
            f"({_provenance()}). Run it yourself: `python docs/tutorials/{path.name}`.*")
    parts = [f"<!-- generated from docs/tutorials/{path.name} by docs/tutorials/render.py: edit the script, "
             "then render it again -->"]
    ns: Dict[str, Any] = {"__name__": "__main__"}
    home = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="camkit_tutorial_") as tmp:
        scratch = Path(tmp)
        os.chdir(scratch)
        try:
            for k, (kind, source) in enumerate(cells(path.read_text()), start=1):
                if kind == "markdown":
                    parts.append(source)
                    if note:
                        parts.append(note)
                        note = ""
                    continue
                before = _files(scratch)
                printed, value = run_cell(source, ns, f"{path.name} (cell {k})")
                _close_figures()
                parts.append(f"```python\n{source}\n```")
                if printed.strip():
                    parts.append(f"```text\n{printed.rstrip()}\n```")
                parts += [f"![{n}]({path.stem}/{n})" for n in _pictures(scratch, before, value, pics, k)]
        finally:
            os.chdir(home)
    page = out / f"{path.stem}.md"
    page.write_text("\n\n".join(parts) + "\n")
    return page


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("numbers", nargs="*", help="tutorial numbers (default: all), e.g. 05 07")
    a = ap.parse_args(argv)
    paths = sorted(HERE.glob("[0-9][0-9]_*.py"))
    if a.numbers:
        paths = [p for p in paths if p.name[:2] in a.numbers]
    if not paths:
        print(f"no tutorial numbered {' '.join(a.numbers)} in {HERE}", file=sys.stderr)
        return 2
    for p in paths:
        page = render(p)
        size = sum(f.stat().st_size for f in (OUT / p.stem).iterdir())
        print(f"wrote {page.relative_to(HERE.parents[1])} ({size / 1024:.0f} KB of pictures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
