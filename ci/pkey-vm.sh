#!/usr/bin/env bash
# pkey-vm.sh — run commands inside a QEMU/TCG guest whose CPU has
# protection keys (PKU/OSPKE), on any x86_64 host: TCG emulates PKU with
# `-cpu max`, so neither KVM nor a host with pkeys is needed.
#
#   ci/pkey-vm.sh [options] 'CMD1 ARGS...' ['CMD2 ARGS...' ...]
#
# The guest is Debian's kernel booted with an initramfs made here: a static
# busybox, the files the commands need, and an init that runs each CMD with
# busybox sh (in order, output on the serial console, which is this
# script's stdout), then powers off. Leading VAR=VALUE words set the
# environment of that command. Every word of a CMD that is an absolute path
# to a host file is copied into the guest at the same path; ELF files bring
# every library `ldd` lists and the loader. Other files: -i.
#
# Options:
#   -i PATH     also copy PATH (file or directory) to the same path in the
#               guest; ELF files bring their libraries (repeatable)
#   -e VAR=VAL  set VAR=VAL for every command (repeatable)
#   -C DIR      working directory of the commands (default /tmp)
#   -T SECS     time limit of each command in the guest (default 900)
#   -t SECS     time limit of the whole VM run, from the host (default 3600)
#   -m MEM      guest memory (default 4G)
#   -s N        guest vCPUs (default 2)
#   -k KERNEL   kernel image (default: the newest /boot/vmlinuz-*)
#   -l FILE     keep the console log (without CRs) in FILE
#
# The console shows, for each command, `=== PKEY-VM: BEGIN <i>: <cmd>` and
# `=== PKEY-VM: END <i> rc=<rc> wall=<s>s` (rc=124 after the time limit),
# and `=== PKEY-VM: DONE uptime=<s>s` after the last.
# After a command that failed, the kernel's messages during it (the last
# 80 lines): fatal signals are logged there with the faulting address and
# registers (`print-fatal-signals`), which is how a crash in the guest
# was found to be another thread's stack unmapped under it (2026-12-07).
#
# Exit status: 0 if every command exited 0; 1 if one failed or the guest
# did not finish; 3 if the guest has no pku/ospke; 124 if the VM ran out of
# time; 2 on usage errors or a missing tool.
#
# Needs (Debian 12): qemu-system-x86 linux-image-amd64 busybox-static cpio.
# The kernel must have CONFIG_X86_INTEL_MEMORY_PROTECTION_KEYS=y (Debian's
# has). A boot and power-off cost about 5-20 s; programs run roughly ten
# times slower than natively (TCG), so only ratios measured within one
# guest run mean anything.
set -euo pipefail

me=pkey-vm
usage() { sed -n '2,/^set -euo/p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 2; }
die() { echo "$me: $*" >&2; exit 2; }

INCLUDES=()
ENVS=()
CWD=/tmp
CMD_TIMEOUT=900
TIMEOUT=3600
MEM=4G
SMP=2
KERNEL=
KEEP_LOG=
while getopts "i:e:C:T:t:m:s:k:l:h" opt; do
    case $opt in
        i) INCLUDES+=("$OPTARG") ;;
        e) ENVS+=("$OPTARG") ;;
        C) CWD=$OPTARG ;;
        T) CMD_TIMEOUT=$OPTARG ;;
        t) TIMEOUT=$OPTARG ;;
        m) MEM=$OPTARG ;;
        s) SMP=$OPTARG ;;
        k) KERNEL=$OPTARG ;;
        l) KEEP_LOG=$OPTARG ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
for n in "$CMD_TIMEOUT" "$TIMEOUT" "$SMP"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "expected a whole number above 0, got '$n'"
done

for tool in qemu-system-x86_64 cpio gzip ldd; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install qemu-system-x86 cpio)"
done
is_static() {
    local out
    [ -x "$1" ] || return 1
    out=$(LC_ALL=C ldd "$1" 2>&1 || true)   # ldd exits 1 on a static binary
    grep -q 'not a dynamic executable' <<<"$out"
}
BUSYBOX=
for b in "$(command -v busybox || true)" /bin/busybox /usr/bin/busybox; do
    if [ -n "$b" ] && is_static "$b"; then BUSYBOX=$b; break; fi
done
[ -n "$BUSYBOX" ] || die "a static busybox is needed (apt-get install busybox-static)"
if [ -z "$KERNEL" ]; then
    KERNEL=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1 || true)
fi
[ -n "$KERNEL" ] && [ -r "$KERNEL" ] || die "no kernel image (apt-get install linux-image-amd64)"
KCONFIG=/boot/config-${KERNEL#/boot/vmlinuz-}
if [ -r "$KCONFIG" ] && ! grep -q '^CONFIG_X86_INTEL_MEMORY_PROTECTION_KEYS=y' "$KCONFIG"; then
    die "$KERNEL lacks CONFIG_X86_INTEL_MEMORY_PROTECTION_KEYS=y"
fi

WORK=$(mktemp -d /tmp/pkey-vm.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,dev,proc,sys,tmp,etc,usr/bin,usr/sbin}

# --- files and their libraries ----------------------------------------
copy_one() {   # host file $1 to the same path in the guest
    local dst=$ROOT$1
    [ -e "$dst" ] && return 0
    mkdir -p "$(dirname "$dst")"
    cp -L --preserve=mode,timestamps "$1" "$dst"
}
copy_with_libs() {   # $1: a host file; an ELF file brings its libraries
    local f=$1 lib
    copy_one "$f"
    if [ "$(head -c4 "$f" 2>/dev/null | tr -d '\0')" = $'\x7fELF' ]; then
        # "libx.so => /path (0x..)" and "/lib64/ld-linux-x86-64.so.2 (0x..)"
        while read -r lib; do
            if [ -n "$lib" ] && [ -e "$lib" ]; then copy_one "$lib"; fi
        done < <(ldd "$f" 2>/dev/null | awk '/=>/ { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// { print $1 }')
    fi
}
include_path() {
    local p=$1 f
    if [ -d "$p" ]; then
        while IFS= read -r -d '' f; do copy_with_libs "$f"; done < <(find "$p" -type f -print0)
    elif [ -e "$p" ]; then
        copy_with_libs "$p"
    else
        die "$p does not exist"
    fi
}

cp "$BUSYBOX" "$ROOT/bin/busybox"
for p in ${INCLUDES[@]+"${INCLUDES[@]}"}; do include_path "$p"; done

n=0
for cmd in "$@"; do
    n=$((n + 1))
    set -f
    # shellcheck disable=SC2206 # split on purpose: the words of the command
    words=($cmd)
    set +f
    for w in "${words[@]}"; do
        w=${w#*=}          # VAR=/path words too
        w=${w%%[;|&)]*}    # /path; /path| ...
        case $w in
            /*) if [ -f "$w" ]; then copy_with_libs "$w"; fi ;;
        esac
    done
    printf '%s\n' "$cmd" > "$ROOT/etc/pkey-vm-cmd.$n"
done
NCMDS=$n
for e in ${ENVS[@]+"${ENVS[@]}"}; do printf 'export %q\n' "$e"; done > "$ROOT/etc/pkey-vm-env"

cat > "$ROOT/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/tmp TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# /tmp as tmpfs, unless included files live under /tmp (the root is writable).
[ -z "\$(ls -A /tmp)" ] && mount -t tmpfs -o size=75% tmpfs /tmp
ip link set lo up
exec </dev/console >/dev/console 2>&1
echo "=== PKEY-VM: kernel \$(uname -r), \$(nproc) vCPUs, \$(awk '/MemTotal/ {print \$2 " kB"}' /proc/meminfo)"
echo "=== PKEY-VM: cpu flags: \$(grep -o -w 'pku\|ospke' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "=== PKEY-VM: thp: \$(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)"
# The kernel logs every fatal signal (with the registers) to its ring
# buffer, not the console (\`quiet\`): printed after a command that failed,
# so that a crash says where it was, never interleaved with test output.
echo 1 > /proc/sys/kernel/print-fatal-signals 2>/dev/null
. /etc/pkey-vm-env
mkdir -p "$CWD"; cd "$CWD"
i=1
while [ \$i -le $NCMDS ]; do
    cmd=\$(cat /etc/pkey-vm-cmd.\$i)
    echo "=== PKEY-VM: BEGIN \$i: \$cmd"
    t0=\$(cut -d' ' -f1 /proc/uptime)
    dmesg -c >/dev/null 2>&1
    timeout -s KILL $CMD_TIMEOUT sh -c "\$cmd"
    rc=\$?
    if [ \$rc != 0 ]; then
        echo "=== PKEY-VM: the kernel's messages during command \$i (its last 80 lines):"
        dmesg | tail -n 80
    fi
    # busybox timeout: 128+9 when the limit killed the command.
    [ \$rc = 137 ] && { echo "=== PKEY-VM: command \$i ran out of its ${CMD_TIMEOUT}s"; rc=124; }
    t1=\$(cut -d' ' -f1 /proc/uptime)
    echo "=== PKEY-VM: END \$i rc=\$rc wall=\$(awk "BEGIN { printf \"%.1f\", \$t1 - \$t0 }")s"
    i=\$((i + 1))
done
echo "=== PKEY-VM: DONE uptime=\$(cut -d' ' -f1 /proc/uptime)s"
sync
poweroff -f
EOF
chmod +x "$ROOT/init"

INITRD=$WORK/initramfs.cpio.gz
( cd "$ROOT" && find . -print0 | cpio --null -o -H newc --quiet ) | gzip -1 > "$INITRD"
echo "$me: initramfs $(du -h "$INITRD" | cut -f1) ($(du -sh "$ROOT" | cut -f1) unpacked), kernel $KERNEL, $SMP vCPUs, $MEM" >&2

LOG=$WORK/console.log
start=$(date +%s)
set +e
# The serial console turns \n into \r\n: strip the CRs as it goes.
timeout -k 10 "$TIMEOUT" \
    qemu-system-x86_64 -accel tcg -cpu max -smp "$SMP" -m "$MEM" \
        -kernel "$KERNEL" -initrd "$INITRD" \
        -append "console=ttyS0 quiet panic=-1 oops=panic" \
        -nographic -no-reboot -monitor none -serial stdio -nodefaults \
    < /dev/null | sed -u 's/\r$//' | tee "$LOG"
qrc=${PIPESTATUS[0]}
set -e
echo "$me: VM run took $(( $(date +%s) - start ))s (qemu exit $qrc)" >&2
[ -z "$KEEP_LOG" ] || cp "$LOG" "$KEEP_LOG"
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then echo "$me: the VM ran out of its ${TIMEOUT}s" >&2; exit 124; fi
flags=$(grep -m1 '^=== PKEY-VM: cpu flags:' "$LOG" || true)
if ! grep -qw pku <<<"$flags" || ! grep -qw ospke <<<"$flags"; then
    echo "$me: the guest has no pku/ospke (${flags:-no flags line})" >&2; exit 3
fi
grep -q '^=== PKEY-VM: DONE' "$LOG" || { echo "$me: the guest did not finish" >&2; exit 1; }
failed=$(grep -c '^=== PKEY-VM: END [0-9]* rc=[1-9]' "$LOG" || true)
[ "$failed" = 0 ] || { echo "$me: $failed of $NCMDS command(s) failed" >&2; exit 1; }
exit 0
