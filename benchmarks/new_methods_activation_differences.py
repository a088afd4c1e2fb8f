"""Where camkit's KPCA-CAM, Seg-Eigen-CAM, FEM, Guided Backprop and FullGrad eigen_smooth differ from
pytorch-grad-cam 1.5.7's, measured (the README's definition-difference lines come from this output).

Model: torchvision ResNet18, random weights (seed 0) with BatchNorm statistics drawn, float64, 8 standard-normal
images at 64 px, top-1 targets. Writes ``benchmarks/results/new_methods_activation/differences.{json,md}``.

    python -m benchmarks.new_methods_activation_differences     # under a minute on one thread
"""
import contextlib
import copy
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

import camkit.methods as cm
from benchmarks.provenance import markdown_header, provenance
from camkit.normalize import minmax

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from peer_reference import ClassifierOutputTarget, pgc, pgc_maps  # noqa: E402  (the tests' peer wrapper)

warnings.simplefilter("ignore")


def mm(m):
    return minmax(m.double())


def measure() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2*torch.randn_like(m.running_mean))
                m.bias.copy_(0.2*torch.randn_like(m.bias))
                m.weight.copy_(1+0.2*torch.randn_like(m.weight))
                m.running_var.copy_(0.5+torch.rand_like(m.running_var))
    x = torch.randn(8, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = model(x).topk(1, dim=1).indices
    print("model: torchvision resnet18 random weights (seed 0, BN drawn), float64, 8 images 64 px, top-1")
    # KPCA
    for kernel in ("sigmoid", "rbf"):
        peer = pgc_maps(pgc.KPCA_CAM, model, model.layer2, x, t, kernel=kernel)
        A = peer["acts"][:, 0]
        p = cm.kpca_projection(A, kernel=kernel)
        ref = peer["raw"][:, 0].double()
        sign = torch.sign((p*ref).flatten(1).sum(1))
        d_al = (p - sign[:, None, None]*ref).abs().max() / ref.abs().max()
        ours = mm(p.clamp(min=0))
        theirs = mm(ref.clamp(min=0))
        print(f"KPCA {kernel} layer2 8x8: max rel diff after sign alignment {d_al:.2e}; sign differs in {(sign<0).sum().item()}/8 images; max |minmax map diff| {(ours-theirs).abs().max():.3f}")
    # Seg-Eigen
    peer = pgc_maps(pgc.SegEigenCAM, model, model.layer3, x, t)
    ours = cm.SegEigenCAM(model, layers=["layer3"], normalize=None)(x, targets=t).layer_maps["layer3"]
    print(f"SegEigen layer3: max rel diff {((ours - peer['raw'].clamp(min=0)).abs().max()/peer['raw'].abs().max()):.2e}")
    # FEM
    peer = pgc_maps(pgc.FEM, model, model.layer2, x, t)
    paper = cm.FEM(model, layers=["layer2"], normalize=None)(x, targets=t).layer_maps["layer2"]
    pv = cm.FEM(model, layers=["layer2"], normalize=None, mask_weights=True)(x, targets=t).layer_maps["layer2"]
    print(f"FEM layer2: mask_weights vs peer max rel {((pv - peer['raw'].clamp(min=0)).abs().max()/peer['raw'].abs().max()):.2e}; paper vs peer max |minmax diff| {(mm(paper)-mm(peer['raw'].clamp(min=0))).abs().max():.3f}, mean {(mm(paper)-mm(peer['raw'].clamp(min=0))).abs().mean():.3f}")
    # Guided backprop
    pm = copy.deepcopy(model)
    gb = pgc.GuidedBackpropReLUModel(pm, device="cpu")
    g = torch.as_tensor(gb(x[:1].clone(), int(t[0,0])))
    inpl_before = sum(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    inpl_after = sum(m.inplace for m in pm.modules() if isinstance(m, nn.ReLU))
    ours = cm.GuidedBackprop(model, normalize=None)(x[:1], targets=t[:1]).maps[0,0]
    print(f"Guided Backprop: max rel diff {(ours - g.abs().amax(-1)).abs().max()/g.abs().max():.2e}; peer leaves {inpl_after}/{inpl_before} in-place ReLU flags; params with .grad after peer: {sum(p.grad is not None for p in pm.parameters())}/{len(list(pm.parameters()))}")
    # FullGrad eigen
    res = cm.FullGrad(model, eigen_smooth=True, per_channel=True)(x, targets=t).maps[:, 0]
    res2 = cm.FullGrad(model, eigen_smooth=True)(x, targets=t).maps[:, 0]
    peer = pgc.FullGrad(model, [])
    out = torch.as_tensor(peer(x, [ClassifierOutputTarget(int(c)) for c in t[:, 0]], eigen_smooth=True)).double()
    peer.activations_and_grads.release()
    for name, r in (("per_channel=True", res), ("default", res2)):
        corr = [float(torch.corrcoef(torch.stack([r[b].flatten(), out[b].flatten()]))[0, 1]) for b in range(8)]
        print(f"FullGrad eigen {name}: max |diff| {(r-out).abs().max():.3f}, mean {(r-out).abs().mean():.3f}, corr min {min(corr):.3f} median {np.median(corr):.3f}")


def main() -> None:
    torch.set_num_threads(1)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        measure()
    lines = buf.getvalue().strip().splitlines()
    prov = provenance(module="benchmarks.new_methods_activation_differences")
    out = Path(__file__).resolve().parent / "results" / "new_methods_activation"
    out.mkdir(parents=True, exist_ok=True)
    (out / "differences.json").write_text(json.dumps({"provenance": prov, "lines": lines}, indent=1) + "\n")
    (out / "differences.md").write_text("# KPCA-CAM, Seg-Eigen-CAM, FEM, Guided Backprop, FullGrad eigen_smooth against "
                                        "pytorch-grad-cam\n\n" + markdown_header(prov) + "\n"
                                        + "".join(f"- {ln}\n" for ln in lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
