/* CPU fast path of noise_sweep.sweep: the same z and the same float arithmetic as the torch code in
 * noise.py, bit for bit (tests/test_noise.py compares them), in one pass over the weights.
 * Built by noise_sweep.py with `gcc -O3 -fopenmp -ffp-contract=off` (no FMA: torch rounds the multiply and
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

/* ops: kind[k] 0 = Add (w += z*a[k]), 1 = Update (w -= z*a[k] + w*b[k]; the w*b term only if decays).
 * Tiles of T elements: hashes of the tile's blocks, then z, then each op as a flat loop over the tile, so
 * the compiler vectorizes every stage (64-bit multiplies included, where the CPU has them). */
#define T 2048

static inline __attribute__((always_inline)) void run(void* w, const int dt, int64_t n, uint64_t key,
        int64_t start, const float* table, int nops, const int* kind, const float* a, const float* b,
        int decays, int nthreads) {
    int64_t ntiles = (n + T - 1) / T;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t tile = 0; tile < ntiles; tile++) {
        uint64_t h[T / 4 + 2];
        float z[T], v[T];
        int64_t t0 = tile * T, m = n - t0 < T ? n - t0 : T;
        int64_t g0 = start + t0, b0 = g0 >> 2, nb = ((g0 + m - 1) >> 2) - b0 + 1;
        for (int64_t j = 0; j < nb; j++) h[j] = mix(key + (uint64_t)(b0 + j + 1) * GAMMA);
        for (int64_t i = 0; i < m; i++) {
            int64_t g = g0 + i;
            z[i] = table[(h[(g >> 2) - b0] >> ((g & 3) * 16)) & 0xFFFF];
        }
        for (int64_t i = 0; i < m; i++) v[i] = load(w, t0 + i, dt);
        for (int k = 0; k < nops; k++) {
            const float ak = a[k], bk = b[k];
            if (kind[k] == 0) {
                for (int64_t i = 0; i < m; i++) v[i] = round_dt(v[i] + z[i] * ak, dt);
            } else if (bk != 0.0f && decays) {
                for (int64_t i = 0; i < m; i++) {
                    float t = z[i] * ak;
                    t = t + round_dt(v[i] * bk, dt);
                    v[i] = round_dt(v[i] - t, dt);
                }
            } else {
                for (int64_t i = 0; i < m; i++) v[i] = round_dt(v[i] - z[i] * ak, dt);
            }
        }
        for (int64_t i = 0; i < m; i++) store(w, t0 + i, dt, v[i]);
    }
}

void sweep(void* w, int dt, int64_t n, uint64_t key, int64_t start, const float* table,
           int nops, const int* kind, const float* a, const float* b, int decays, int nthreads) {
    if (dt == 0) run(w, 0, n, key, start, table, nops, kind, a, b, decays, nthreads);
    else if (dt == 1) run(w, 1, n, key, start, table, nops, kind, a, b, decays, nthreads);
    else run(w, 2, n, key, start, table, nops, kind, a, b, decays, nthreads);
}
