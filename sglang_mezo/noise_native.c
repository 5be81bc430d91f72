/* CPU fast path of noise.sweep: the same z and the same float arithmetic as the torch code in
 * noise.py, bit for bit (tests/test_noise.py compares them), in one pass over the weights.
 * Built by noise.py with `gcc -O3 -fopenmp -ffp-contract=off` (no FMA: torch rounds the multiply and
 * the add separately, and so must we). */
#include <stdint.h>
#include <string.h>

#define GAMMA 0x9E3779B97F4A7C15ULL

static inline uint64_t mix(uint64_t x) {
    x ^= x >> 30; x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27; x *= 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}
static inline float bf16_to_f(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f_to_bf16(float f) {          /* round to nearest even, as torch does */
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float load(const void* w, int64_t i, int dt) {
    if (dt == 0) return ((const float*)w)[i];
    if (dt == 1) return bf16_to_f(((const uint16_t*)w)[i]);
    return (float)((const _Float16*)w)[i];
}
static inline void store(void* w, int64_t i, int dt, float v) {
    if (dt == 0) ((float*)w)[i] = v;
    else if (dt == 1) ((uint16_t*)w)[i] = f_to_bf16(v);
    else ((_Float16*)w)[i] = (_Float16)v;
}
static inline float round_dt(float v, int dt) {      /* value as stored in the weight's dtype */
    if (dt == 0) return v;
    if (dt == 1) return bf16_to_f(f_to_bf16(v));
    return (float)(_Float16)v;
}

/* ops: kind[k] 0 = Add (w += z*a[k]), 1 = Update (w -= z*a[k] + w*b[k]; the w*b term only if decays) */
static inline __attribute__((always_inline)) float apply_ops(float v, float z, int dt, int nops, const int* kind,
                                                            const float* a, const float* b, int decays) {
    for (int k = 0; k < nops; k++) {
        float t = z * a[k];
        if (kind[k] == 1 && b[k] != 0.0f && decays) t = t + round_dt(v * b[k], dt);
        v = round_dt(kind[k] == 0 ? v + t : v - t, dt);
    }
    return v;
}

static inline __attribute__((always_inline)) void run(void* w, const int dt, int64_t n, uint64_t key,
        int64_t start, const float* table, int nops, const int* kind, const float* a, const float* b,
        int decays, int nthreads) {
    int64_t b0 = start >> 2, b1 = ((start + n - 1) >> 2) + 1;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t blk = b0; blk < b1; blk++) {
        uint64_t h = mix(key + (uint64_t)(blk + 1) * GAMMA);
        int64_t i0 = blk * 4 - start;
        if (i0 >= 0 && i0 + 4 <= n) {          /* interior block: no bounds checks */
            for (int lane = 0; lane < 4; lane++) {
                float z = table[(h >> (16 * lane)) & 0xFFFF];
                store(w, i0 + lane, dt, apply_ops(load(w, i0 + lane, dt), z, dt, nops, kind, a, b, decays));
            }
        } else {
            for (int lane = 0; lane < 4; lane++) {
                int64_t i = i0 + lane;
                if (i < 0 || i >= n) continue;
                float z = table[(h >> (16 * lane)) & 0xFFFF];
                store(w, i, dt, apply_ops(load(w, i, dt), z, dt, nops, kind, a, b, decays));
            }
        }
    }
}

void sweep(void* w, int dt, int64_t n, uint64_t key, int64_t start, const float* table,
           int nops, const int* kind, const float* a, const float* b, int decays, int nthreads) {
    if (dt == 0) run(w, 0, n, key, start, table, nops, kind, a, b, decays, nthreads);
    else if (dt == 1) run(w, 1, n, key, start, table, nops, kind, a, b, decays, nthreads);
    else run(w, 2, n, key, start, table, nops, kind, a, b, decays, nthreads);
}
