#!/usr/bin/env bash
# Validate docker-compose.yml without a Docker engine.
#
# Uses docker-compose 1.29.2 (the Python implementation, whose `config` command
# only parses, interpolates and schema-checks the file) installed in its own venv
# at .venv-compose/ so it cannot disturb the project's .venv.
#
#   .ci/validate_compose.sh                 # validates ./docker-compose.yml
#   .ci/validate_compose.sh path/to/file.yml
#
# Exit status: 0 valid, non-zero invalid (or installation failure).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv-compose"
COMPOSE="$VENV/bin/docker-compose"
COMPOSE_FILE_ARG="${1:-docker-compose.yml}"
PYTHON="${PYTHON:-python3}"

compose_works() {
  [[ -x "$COMPOSE" ]] && "$COMPOSE" version >/dev/null 2>&1
}

if ! compose_works; then
  echo "validate_compose: installing docker-compose 1.29.2 into .venv-compose/" >&2
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  # PyYAML 5.4.1 (required by docker-compose 1.29.2) has no wheel for Python 3.11
  # and its sdist does not build with Cython 3 or in an isolated build env, so:
  # build tools first, then PyYAML without build isolation.
  "${pip[@]}" "cython<3" wheel "setuptools<70"
  "${pip[@]}" --no-build-isolation "pyyaml==5.4.1"
  # docker 7 removed APIs compose 1.x uses; requests 2.32 breaks docker<7's
  # http+docker:// adapter.
  "${pip[@]}" "docker<7" "requests<2.32" "docker-compose==1.29.2"
  if ! compose_works; then
    echo "validate_compose: docker-compose installation is not usable" >&2
    exit 2
  fi
fi

# Make the check independent of the caller's shell: every variable the file uses
# must have a ${VAR:-default} fallback, and a stray .env must not mask a missing one.
# docker-compose 1.x only *warns* about unset variables, so such warnings fail here.
err="$(mktemp)"
empty_env="$(mktemp)"
trap 'rm -f "$err" "$empty_env"' EXIT
rc=0
env -i PATH="/usr/bin:/bin" HOME="${HOME:-/tmp}" \
  "$COMPOSE" --env-file "$empty_env" -f "$COMPOSE_FILE_ARG" config -q 2>"$err" || rc=$?
cat "$err" >&2
if [[ $rc -eq 0 ]] && grep -q "variable is not set" "$err"; then
  echo "validate_compose: variables without a \${VAR:-default} fallback (see above)" >&2
  rc=3
fi
if [[ $rc -ne 0 ]]; then
  echo "validate_compose: $COMPOSE_FILE_ARG INVALID (exit $rc)" >&2
  exit "$rc"
fi
echo "validate_compose: $COMPOSE_FILE_ARG OK"
