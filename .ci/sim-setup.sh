#!/usr/bin/env bash
# Headless OpenGL for MuJoCo / Meta-World rendering on Debian, run as root.
#
# Installs Mesa's EGL stack (libegl1 + libegl-mesa0 + libgl1-mesa-dri: software llvmpipe without a GPU;
# a GPU driver's own EGL vendor library is picked up where installed) and selects MUJOCO_GL=egl. If
# mujoco is importable, a one-frame render checks the choice and falls back to OSMesa (libosmesa6).
#
#   . .ci/sim-setup.sh                  # exports MUJOCO_GL in this shell
#   eval "$(bash .ci/sim-setup.sh)"     # same, from a child process
#
# Idempotent (installs only what is missing) and quiet: prints one `export MUJOCO_GL=...` line; apt's
# output is shown only when an install fails.

_sim_install() (
    set -euo pipefail
    missing=()
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        [ "$status" = "install ok installed" ] || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && exit 0
    log=$(mktemp)
    if ! { apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
        >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "sim-setup: could not install ${missing[*]}" >&2
        exit 1
    fi
    rm -f "$log"
)

# True when mujoco is not installed yet (nothing to check) or renders one frame with backend $1.
_sim_renders() {
    local python
    python=$(command -v python3 || command -v python) || return 0
    "$python" -c "import mujoco" >/dev/null 2>&1 || return 0
    MUJOCO_GL="$1" timeout 120 "$python" -c "
import mujoco
renderer = mujoco.Renderer(mujoco.MjModel.from_xml_string('<mujoco/>'), 8, 8)
renderer.render()
renderer.close()
" >/dev/null 2>&1
}

_sim_gl=""
if _sim_install libegl1 libegl-mesa0 libgl1-mesa-dri && _sim_renders egl; then
    _sim_gl=egl
elif _sim_install libosmesa6 && _sim_renders osmesa; then
    _sim_gl=osmesa
fi
unset -f _sim_install _sim_renders

if [ -z "$_sim_gl" ]; then
    unset _sim_gl
    echo "sim-setup: no headless OpenGL backend (egl, osmesa) could render" >&2
    # shellcheck disable=SC2317  # `exit` is reached when the script is executed rather than sourced
    return 1 2>/dev/null || exit 1
fi
export MUJOCO_GL="$_sim_gl"
unset _sim_gl
echo "export MUJOCO_GL=$MUJOCO_GL"
