# Sourced by scripts/up and scripts/test: make .venv with DLHub installed, plus the extras named in
# DLHUB_EXTRAS (scripts/test asks for "test": every servable type, Parsl, examples and the test tools).
# DLHub is a workspace of distributions (libs/common, libs/client, services/*), each installing its own
# namespaced package dlhub.<name>; all of them are installed editable, so code changes need no reinstall.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DLHUB_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${DLHUB_EXTRAS:-}"
STAMP="$VENV/.dlhub-installed${EXTRAS:+-$EXTRAS}"
MEMBERS=(libs/common libs/client services/broker services/registry services/builder services/search services/worker)
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stale=0
[ -f "$STAMP" ] || stale=1
for project in "$ROOT/pyproject.toml" "${MEMBERS[@]/#/$ROOT/}"; do
  [ "${project%.toml}" = "$project" ] && project="$project/pyproject.toml"
  [ "$project" -nt "$STAMP" ] && stale=1
done
if [ "$stale" = 1 ]; then
  started=$SECONDS
  echo "== installing DLHub into $VENV${EXTRAS:+ with extras [$EXTRAS]}"
  [ "$EXTRAS" = test ] && echo "   first run: PyTorch (~3 GB with its CUDA libraries), TensorFlow, Parsl and the examples' packages; several minutes"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  editable=()
  for member in "${MEMBERS[@]}"; do editable+=(-e "$ROOT/$member"); done
  # Without --quiet pip names each package as it collects, downloads and installs it.
  if ! "$VENV/bin/python" -m pip install --progress-bar on "${editable[@]}" -e "$ROOT${EXTRAS:+[$EXTRAS]}" \
    | { grep --line-buffered -E '^(Collecting|Downloading|Building|Installing|Successfully|ERROR|WARNING)' || true; }; then
    echo "error: installing DLHub failed (see pip's messages above)" >&2
    exit 1
  fi
  echo "== installed in $((SECONDS - started)) s"
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
