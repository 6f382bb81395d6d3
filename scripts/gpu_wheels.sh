#!/usr/bin/env bash
# Wheels for scripts/gpu_check.sh on a GPU machine that has PyTorch but no PyPI (Python 3.12, x86-64):
# the project's pinned packages that such an image lacks (diffusers, snakemake and what snakemake needs)
# or holds at another version (transformers), each without its dependencies, into .whl/.
#   bash scripts/gpu_wheels.sh            (on a machine that reaches PyPI; then carry .whl/ over)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON_VERSION:-3.12}
WHEELS=(
  diffusers==0.42.1 transformers==5.23.0
  snakemake==9.27.1 snakemake-interface-common==1.23.0 snakemake-interface-executor-plugins==9.4.0
  snakemake-interface-logger-plugins==2.1.0 snakemake-interface-report-plugins==1.3.0
  snakemake-interface-scheduler-plugins==2.0.2 snakemake-interface-storage-plugins==4.4.1
  argparse-dataclass==2.0.0 conda-inject==1.3.2 configargparse==1.9.0 connection-pool==0.0.3 docutils==0.22.4
  dpath==2.2.0 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3 humanfriendly==10.0 immutables==0.21
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  nbformat==5.11.1 fastjsonschema==2.22.3 jupyter-core==5.9.1 traitlets==5.16.1 platformdirs==4.14.9
  pulp==3.3.2 smart-open==7.7.1 tenacity==9.2.1 throttler==1.2.3 yte==1.9.4
  sqlmodel==0.0.37 sqlalchemy==2.0.58 greenlet==3.5.6 pydantic==2.14.4 pydantic-core==2.50.5
  annotated-types==0.8.0 typing-inspection==0.4.5
)
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
for w in "${WHEELS[@]}"; do
  # a binary wheel for that Python, else (a package published as source only) a pure-Python wheel built here
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    "${platforms[@]}" -d .whl "$w" 2>/dev/null || python3 -m pip wheel -q --no-deps -w .whl "$w" 2>/dev/null \
    || { echo "gpu_wheels: no wheel for $w" >&2; exit 1; }
done
echo "gpu_wheels: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
