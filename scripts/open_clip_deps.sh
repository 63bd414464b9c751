#!/usr/bin/env bash
# Installs open_clip (the `open_clip` study kind's tests and zero-shot heads need it) into the
# environment of the Python given as $1 (default: python), keeping its torch, and makes
# `import open_clip` work where the torchvision that matches this torch cannot load its C++ ops.
#
# Why a script and not just the pyproject extra:
# 1. pip resolves `torchvision` (an open_clip dependency) to its newest release, which pins a
#    newer torch: `pip install open_clip_torch` on torch 2.13.0 would replace it by torch 2.14.1
#    and its CUDA libraries (GBs). Here torch is held at the installed version, so pip takes
#    the torchvision released for it (torch 2.13.0 -> torchvision 0.28.0).
# 2. PyPI's only Linux x86_64 torchvision wheel is a CUDA build. With a CPU-only torch
#    (2.13.0+cpu, from download.pytorch.org or a local wheel) its C++ extension cannot load
#    (it links libtorch_cuda), which torchvision tolerates for every operator but two:
#    `_meta_registrations.py` registers fake kernels for torchvision::nms and ::qnms
#    unconditionally, so `import torchvision` (hence open_clip, timm, and transformers'
#    image utilities) fails with "RuntimeError: operator torchvision::nms does not exist".
#    Those two registrations are then guarded the way torchvision guards all the others
#    (`if torchvision.extension._has_ops()`): torchvision imports as a build without C++ ops
#    (transforms work; torchvision.ops.nms raises torchvision's own "Couldn't load custom C++
#    ops"). Nothing is changed where torchvision imports already.
# Idempotent; run it again after anything reinstalls torchvision.
set -euo pipefail
PY=${1:-python}

torch_version=$("$PY" -c "import importlib.metadata as m; print(m.version('torch'))")
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('open_clip') is None)" 2>/dev/null; then
  echo "== installing open_clip_torch (torch held at $torch_version)"
  "$PY" -m pip install --quiet "open_clip_torch>=2.20" "torch==$torch_version"
fi

if ! "$PY" -c "import torchvision" >/dev/null 2>&1; then
  "$PY" - <<'EOF'
import importlib.util
import pathlib
import re
import subprocess
import sys

error = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True).stderr
if "torchvision::nms does not exist" not in error and "torchvision::qnms does not exist" not in error:
    sys.exit("import torchvision fails for another reason than its C++ ops:\n" + error[-2000:])
folder = pathlib.Path(importlib.util.find_spec("torchvision").submodule_search_locations[0])
file = folder / "_meta_registrations.py"
text = file.read_text()
pattern = re.compile(r'^@torch\.library\.register_fake\("(torchvision::q?nms)"\)$', re.M)
patched, count = pattern.subn(r'@(torch.library.register_fake("\1") if torchvision.extension._has_ops() '
                              r'else (lambda fn: fn))', text)
if count == 0:
    sys.exit(f"{file}: no unguarded nms/qnms registration found to guard; torchvision still fails:\n"
             + error[-2000:])
note = ("# freqmerge-viz scripts/open_clip_deps.sh guarded the nms/qnms fake registrations below: this\n"
        "# torchvision's C++ ops do not load with the installed torch (a CUDA torchvision on a CPU torch).\n")
file.write_text(note + patched)
print(f"== guarded {count} torchvision op registrations in {file} (its C++ ops do not load with this torch)")
EOF
fi

"$PY" -c "import open_clip, torchvision; print('== open_clip', open_clip.__version__, 'with torchvision', torchvision.__version__)"
