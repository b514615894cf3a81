# Sourced by scripts/up and scripts/test: make .venv with DLHub installed from uv.lock, plus the extras named
# in DLHUB_EXTRAS (scripts/test asks for "test": every servable type, Parsl, examples and the test tools).
# DLHub is a uv workspace of distributions (libs/common, libs/client, services/*), each installing its own
# namespaced package dlhub.<name>; `uv sync` installs all of them editable, at the versions pinned in uv.lock.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DLHUB_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${DLHUB_EXTRAS:-}"
UV_VERSION="0.13.9"
TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/dlhub/tools-uv-$UV_VERSION"
STAMP="$VENV/.dlhub-installed${EXTRAS:+-$EXTRAS}"
if [ ! -x "$TOOLS/bin/uv" ]; then
  echo "== installing uv $UV_VERSION into $TOOLS (first run only)"
  "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet "uv==$UV_VERSION"
fi
stale=0
[ -f "$STAMP" ] || stale=1
for file in "$ROOT/uv.lock" "$ROOT"/pyproject.toml "$ROOT"/libs/*/pyproject.toml "$ROOT"/services/*/pyproject.toml; do
  [ "$file" -nt "$STAMP" ] && stale=1
done
if [ "$stale" = 1 ]; then
  started=$SECONDS
  echo "== installing DLHub into $VENV from uv.lock${EXTRAS:+ with extras [$EXTRAS]}"
  [ "$EXTRAS" = test ] && echo "   first run: PyTorch (~3 GB with its CUDA libraries), TensorFlow, Parsl, the examples' packages"
  # uv reads the CA bundle from SSL_CERT_FILE or, with system certificates, the system store (proxies, private CAs).
  # --inexact: `./scripts/up` (no extras) must not uninstall what `./scripts/test` added to the same venv.
  UV_PROJECT_ENVIRONMENT="$VENV" UV_SYSTEM_CERTS=1 "$TOOLS/bin/uv" sync --locked --inexact --python "$PYTHON" \
    ${EXTRAS:+--extra "$EXTRAS"} --project "$ROOT"
  echo "== installed in $((SECONDS - started)) s"
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
