#!/usr/bin/env bash
# `make test` on a fresh Debian bookworm root, as a new user runs it: a debootstrapped root with only
# git and make added, none of this machine's pip config or wheel cache, a `git clone` of REV, then the
# README's test command. Prints the pytest summary line; exits with make's status.
#
#   bash tests/fresh/run.sh [--keep] [--root DIR] [--cmd 'COMMAND'] [REV]
#
#   REV          commit to clone (default HEAD of this checkout)
#   --keep       keep the root for a rerun with --root (its mounts are undone either way)
#   --root DIR   reuse a kept root: check out REV again (its build/ and .venv stay) and run there
#   --cmd CMD    run CMD in the clone instead of `make test`, e.g. '.venv/bin/python -m pytest tests/ansible -x'
#
# Needs root (debootstrap, chroot, mounts). The debootstrapped base is cached as a tarball under
# $KIT_FRESH_CACHE (default /var/tmp/kit-fresh); delete it to start from a new snapshot of Debian.
# This machine's CA certificates (/usr/local/share/ca-certificates) are copied in, so a TLS-inspecting
# proxy works for apt and pip. Each run's full log is <root>-<UTC time>.log next to the root.
set -euo pipefail

cache=${KIT_FRESH_CACHE:-/var/tmp/kit-fresh}
mirror=${KIT_TEST_DEBIAN_MIRROR:-http://deb.debian.org/debian}
base=$cache/bookworm-base.tar
keep=0 root="" cmd="make test" rev=HEAD

usage() { sed -n '6,11s/^# \{0,1\}//p' "$0" >&2; exit 2; }
log() { echo "run.sh: $*" >&2; }

# The base: Debian's default debootstrap set plus what a user needs to get the kit and type make.
build_base() {
  command -v debootstrap >/dev/null || { log "installing debootstrap"; apt-get install -y -qq debootstrap >/dev/null; }
  local tmp=$cache/base.tmp
  rm -rf "$tmp"
  log "debootstrap bookworm (a few minutes) -> $base"
  debootstrap --include=ca-certificates,git,make bookworm "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
    { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  # Sources as the Debian installer writes them: main, updates, security.
  cat >"$tmp/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  rm -rf "$tmp"/var/cache/apt/archives/*.deb
  tar -C "$tmp" -cf "$base.part" . && mv "$base.part" "$base"
  rm -rf "$tmp"
}

# A new root from the base, trusting what this machine trusts (a proxy CA), nothing else of its setup.
new_root() {
  root=$cache/root-$(date -u +%Y%m%dT%H%M%S)
  mkdir -p "$root"
  tar -C "$root" -xf "$base"
  if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
    cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
  fi
  chroot "$root" update-ca-certificates >/dev/null 2>&1 || { log "update-ca-certificates failed in $root"; exit 1; }
  cp /etc/resolv.conf "$root/etc/resolv.conf"
}

# Mount what a machine has: the root itself as a mount point (runc's pivot_root), /proc, /sys, /dev.
mount_all() {
  mountpoint -q "$root" || mount --bind "$root" "$root"
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys"
  mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev"
  mount -t tmpfs -o mode=755 run "$root/run"
}

# Stop what the run left behind (podman's conmon, a browser) by pid, then unmount everything below.
cleanup() {
  local pid
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    case "$(readlink "/proc/$pid/root" 2>/dev/null)/" in
      "$root"/*) kill -9 "$pid" 2>/dev/null || true ;;
    esac
  done
  umount -R "$root" 2>/dev/null || umount -R -l "$root" 2>/dev/null || true
  # Mounts made below the root by hand or by podman (its storage), deepest first.
  awk -v r="$root/" 'index($5, r) == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  if [ "$keep" -eq 0 ]; then
    rm -rf --one-file-system "$root"
  else
    log "kept $root (rerun: bash tests/fresh/run.sh --root $root [--cmd '...'] [REV])"
  fi
}

# A fresh `git clone` of this checkout at the commit (a reused root keeps its build/ and .venv).
checkout() {
  local repo=$1 commit=$2 src=$root/root/lmdeploy-kit
  if [ -d "$src/.git" ]; then
    git -C "$src" fetch -q "$repo" "$commit"
  else
    git clone -q --no-hardlinks "$repo" "$src"
  fi
  git -C "$src" -c advice.detachedHead=false checkout -q --detach "$commit"
}

# Bash reads a function whole before running it: a checkout that rewrites this file mid-run is harmless.
main() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --keep) keep=1 ;;
      --root) root=${2:?--root needs a directory}; keep=1; shift ;;
      --cmd) cmd=${2:?--cmd needs a command}; shift ;;
      -h|--help) usage ;;
      -*) log "unknown option $1"; usage ;;
      *) rev=$1 ;;
    esac
    shift
  done
  [ "$(id -u)" -eq 0 ] || { log "needs root (debootstrap, chroot, mounts)"; exit 2; }
  local repo commit rc summary out
  repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
  commit=$(git -C "$repo" rev-parse --verify -q "$rev^{commit}") || { log "no such commit: $rev"; exit 2; }
  mkdir -p "$cache"
  [ -f "$base" ] || build_base
  if [ -z "$root" ]; then
    new_root
  fi
  root=$(cd "$root" && pwd)
  [ -x "$root/usr/bin/git" ] || { log "$root is not a root made by this script"; exit 2; }
  trap cleanup EXIT
  mount_all
  checkout "$repo" "$commit"
  out=$root-$(date -u +%Y%m%dT%H%M%S).log
  log "running '$cmd' at ${commit:0:12} in $root (log: $out)"

  set +e
  chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c "cd /root/lmdeploy-kit && $cmd" >"$out" 2>&1
  rc=$?
  set -e
  # pytest's last line: "==== 1 failed, 347 passed ... in 2008.67s (0:33:28) ====" (no = under -q).
  summary=$(grep -E '^(=+ )?[0-9]+ [a-z]+.* in [0-9.]+s( \([0-9:]+\))?( =+)?$' "$out" | tail -1 || true)
  echo "${summary:-(no pytest summary line; tail of $out:)}"
  [ -n "$summary" ] || tail -30 "$out"
  echo "exit status $rc at ${commit:0:12}"
  return "$rc"
}

main "$@"
