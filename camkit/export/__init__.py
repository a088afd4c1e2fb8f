"""Dataset-scale maps and pseudo-masks: ``camkit export`` and ``camkit evaluate-masks``.

    camkit export photos/ --out cams_out --labels labels.csv
    torchrun --standalone --nproc_per_node=2 -m camkit export photos/ --out cams_out
    camkit evaluate-masks cams_out --gt SegmentationClass --sweep 0.05:0.95:0.05

``export`` turns a folder (recursive, sorted, image files only) or a text/CSV
list of image paths into, per image, mirroring its path relative to SRC
(extension replaced):

- ``DIR/cams/<rel>.npz`` (``numpy.load``, no pickle): ``keys`` (K,) int64 class
  indices; ``cam`` (K, h, w) float16, the normalized, fused map at the
  resolution of the finest hooked layer; ``high_res`` (K, H, W) float16 in
  [0, 1] at the original image's size and geometry;
- ``DIR/masks/<rel>.png``: a palette PNG, 0 = background (every map of
  ``high_res`` below ``--bg-threshold``), else 1 + the class index of the
  strongest map (its entry in ``keys``; :func:`camkit.pseudomasks.masks_from_maps`);
- ``DIR/manifest.jsonl``: one JSON object per image in work-list order, with
  ``path``, ``rel``, ``status`` ("ok" / "error"), ``keys``, ``scores`` (the
  target logits), ``size`` ([H, W]) and ``error``; ``DIR/export.json``: the
  settings, checked on a rerun.

Each file is written under a temporary name and renamed, so an output that
exists is complete: a rerun skips the images whose two outputs exist and
computes the rest; a killed run loses at most the images in flight. The
sorted work list is cut into batches of ``--batch-size`` images, and under
``torchrun`` each rank takes a contiguous run of whole batches (counts differ
by at most one), appends its records to ``DIR/parts/<run>.rank<r>.jsonl`` and
rank 0 merges them into ``manifest.jsonl`` at the end (gloo on CPU, NCCL on
GPU). Every image is computed in the same batch whatever the number of
processes, and a batch with a missing output is recomputed whole (only the
missing outputs are written), so with the same ``--batch-size`` and
``--threads`` the files are byte for byte those of one process. ``DIR``
must be one shared folder for all ranks (on several machines: a shared
filesystem).

Modules: ``worklist`` (images and labels), ``files`` (the output format, atomic
writes), ``distributed`` (ranks and their shares), ``manifest`` (part files and
their merge), ``pipeline`` (decode, explain, write), ``decoding`` (the decoders:
PIL on CPU, nvjpeg on a CUDA device), ``run`` (:func:`run`),
``evaluate`` (mask scores).
"""
from .distributed import rank_batches, share
from .evaluate import evaluate, format_evaluation
from .files import is_complete, output_paths, read_cams, write_outputs
from .manifest import merge_manifest, read_manifest
from .run import DEFAULT_THRESHOLD, Summary, run
from .worklist import Item, list_images, work_items

__all__ = [
    "run", "Summary", "DEFAULT_THRESHOLD", "evaluate", "format_evaluation",
    "Item", "list_images", "work_items", "share", "rank_batches",
    "output_paths", "is_complete", "write_outputs", "read_cams", "merge_manifest", "read_manifest",
]
