#!/usr/bin/env bash
# The test suite, as README.md and CI (.ci/run) run it: installs what a fresh machine lacks,
# then runs every test of the workspace (CPU) and the wgpu tests (on Mesa's lavapipe, a
# software Vulkan driver, when there is no GPU). Needs nothing outside this checkout: the
# test data are the excerpts committed in fixtures/.
#
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Mesa's lavapipe: burn's wgpu backend (and our CubeCL kernels) run on a machine without a GPU.
if ! ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "+ installing Mesa's lavapipe (mesa-vulkan-drivers, libvulkan1)"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }

run() { echo "+ $*"; "$@"; }
run cargo test --workspace
run cargo test -p hymba --features wgpu --test wgpu --test scan_kernel
