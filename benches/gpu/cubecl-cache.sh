# Sourced by the GPU scripts: CubeCL's compiled-kernel (PTX) and autotune caches on disk, so that
# only the first call of a session compiles and autotunes. CC_DIR (default /tmp/cc) holds them;
# a cache.tgz next to the executables (saved by an earlier call into $OUT) is restored first.
#
# CubeCL keys a compiled kernel by its name and comptime arguments, not by its code: a build
# whose kernel body changed would load another build's PTX from a shared cache and run the old
# kernel (a test passing on code it never ran, an A/B timing one kernel twice). So every
# executable gets caches of its own, keyed by its contents: call `cubecl_cache_for EXE` before
# running EXE (it writes ./cubecl.toml).
CC_DIR=${CC_DIR:-/tmp/cc}
mkdir -p "$CC_DIR"
if [ ! -f "$CC_DIR/.restored" ]; then
    for t in "${DIR:-.}/cache.tgz" cache.tgz; do [ -f "$t" ] && tar xzf "$t" -C "$CC_DIR" && break; done
    touch "$CC_DIR/.restored"
fi
cubecl_cache_for() {
    local key
    key=$(sha256sum "${1:?the executable}" | cut -c1-16) || return 1
    mkdir -p "$CC_DIR/$key"
    cat > cubecl.toml <<T
[compilation]
cache = { file = "$CC_DIR/$key/ptx" }
[compilation.logger]
level = "basic"
file = "$CC_DIR/$key/compile.log"
[autotune]
cache = { file = "$CC_DIR/$key/autotune" }
[autotune.logger]
level = "minimal"
file = "$CC_DIR/$key/autotune.log"
T
}
save_cubecl_cache() {
    (cd "$CC_DIR" && tar czf "$OUT/cache.tgz" --exclude='*.log' \
        $(ls -d */ 2>/dev/null | grep -E '^[0-9a-f]{16}/$')) 2>/dev/null
    for d in "$CC_DIR"/*/; do
        for f in "$d"*.log; do [ -f "$f" ] && cp "$f" "$OUT/$(basename "$d")-$(basename "$f")"; done
    done
    rm -f cubecl.toml
}
