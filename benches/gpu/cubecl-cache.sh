# Sourced by the GPU scripts: CubeCL's compiled-kernel (PTX) and autotune caches on disk, so that
# only the first call of a session compiles and autotunes. CC_DIR (default /tmp/cc) holds them;
# a cache.tgz next to the executables (saved by an earlier call into $OUT) is restored first.
CC_DIR=${CC_DIR:-/tmp/cc}
mkdir -p "$CC_DIR"
for t in "${DIR:-.}/cache.tgz" cache.tgz; do [ -f "$t" ] && tar xzf "$t" -C "$CC_DIR" && break; done
cat > cubecl.toml <<T
[compilation]
cache = { file = "$CC_DIR/ptx" }
[compilation.logger]
level = "basic"
file = "$CC_DIR/compile.log"
[autotune]
cache = { file = "$CC_DIR/autotune" }
[autotune.logger]
level = "minimal"
file = "$CC_DIR/autotune.log"
T
save_cubecl_cache() {
    tar czf "$OUT/cache.tgz" -C "$CC_DIR" ptx autotune 2>/dev/null
    cp "$CC_DIR"/*.log "$OUT/" 2>/dev/null
    rm -f cubecl.toml
}
