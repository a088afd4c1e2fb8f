#!/usr/bin/env bash
# Run HERE (the session's machine, repo root, project venv active) just before the device call.
# Stages what the GPU image lacks in .gpu_site/ (ignored through .git/info/exclude, carried by the call):
# the pure-Python peer libraries pytorch-grad-cam (+ ttach), torchcam and captum copied from this venv,
# and the commit being measured (the working tree travels without .git).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
site=.gpu_site
grep -qxF "/$site/" .git/info/exclude || echo "/$site/" >> .git/info/exclude
rm -rf "$site" && mkdir -p "$site"
sp=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for pkg in pytorch_grad_cam ttach torchcam captum; do cp -r "$sp/$pkg" "$site/"; done
for dist in grad_cam ttach torchcam captum; do cp -r "$sp/$dist"-*.dist-info "$site/"; done
find "$site" -name __pycache__ -prune -exec rm -rf {} +
git rev-parse HEAD > "$site/COMMIT"
if [ -z "$(git status --porcelain --untracked-files=no)" ]; then echo 0 > "$site/DIRTY"; else echo 1 > "$site/DIRTY"; fi
echo "staged $(du -sh "$site" | cut -f1) in $site for commit $(cat "$site/COMMIT") (dirty: $(cat "$site/DIRTY"))"
