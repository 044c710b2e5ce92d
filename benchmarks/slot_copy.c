/* What a writer's copy into a slot costs, by copy strategy and by which slot it copies
 * into (issue 16; see "Sustained frames/s against iceoryx2" in benchmarks/README.md).
 *
 *     d=$(mktemp -d) && cc -O3 -o "$d/slot_copy" benchmarks/slot_copy.c
 *     "$d/slot_copy" copy BYTES NSLOTS REPS      # one process: strategies, NSLOTS slots in turn
 *     "$d/slot_copy" handoff BYTES FRAMES ROUNDS # two processes: which slot, with a reader
 *
 * Slots live in one /dev/shm mapping (4 KiB pages, page-aligned slots, as ndsharray's);
 * the source is malloc'd (so 16 bytes past a page boundary, as numpy's large arrays) and
 * filled before each copy, as a camera or the benchmark fills its frame.
 *
 * copy: per strategy, the fastest copy, the fill before it and a read of one word per
 * cache line of the slot right after (in the same process): REPS rounds of 12 frames in a
 * row per strategy, the slots taken in turn, the first 4 unmeasured (the slots settle), the
 * strategies' order rotating by round. Strategies: glibc's memcpy; rep movsb; AVX2 non-temporal stores; AVX-512
 * stores; a backward copy in 64 KiB chunks.
 *
 * handoff: a reader process checks every word of each frame (as run.py's sustained reader
 * does) and acknowledges it; the writer then fills and copies the next one into the slot a
 * policy names: "two in turn" (ndsharray's writer when its reader keeps up: the slot
 * written two frames ago), "the one just read" (a LIFO pool: the slot the reader released
 * last) or "three in turn". p10/p50 of the copy and of the reader's check, FRAMES frames
 * per policy and round. The two processes take turns, so this measures where the lines
 * are when a copy starts, not two cores' contention. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <immintrin.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

typedef void (*copy_fn)(char *, const char *, size_t);
static void glibc(char *d, const char *s, size_t n) { memcpy(d, s, n); }
static void movsb(char *d, const char *s, size_t n) { __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory"); }
__attribute__((target("avx2"))) static void nt_avx2(char *d, const char *s, size_t n) {
    size_t blocks = n / 64; /* d is page-aligned */
    for (size_t i = 0; i < blocks; i++, d += 64, s += 64) {
        __m256i a = _mm256_loadu_si256((const __m256i *)s), b = _mm256_loadu_si256((const __m256i *)(s + 32));
        _mm256_stream_si256((__m256i *)d, a);
        _mm256_stream_si256((__m256i *)(d + 32), b);
    }
    _mm_sfence();
    memcpy(d, s, n % 64);
}
__attribute__((target("avx512f"))) static void avx512(char *d, const char *s, size_t n) {
    size_t blocks = n / 64;
    for (size_t i = 0; i < blocks; i++, d += 64, s += 64) _mm512_store_si512((void *)d, _mm512_loadu_si512((const void *)s));
    memcpy(d, s, n % 64);
}
static void tail_first(char *d, const char *s, size_t n) { /* the part a fill left in L2 first */
    size_t t = n < (1u << 20) ? n : (1u << 20);
    memcpy(d + n - t, s + n - t, t);
    memcpy(d, s, n - t);
}
static void backward(char *d, const char *s, size_t n) {
    while (n > 0) {
        size_t m = n < 65536 ? n : 65536;
        n -= m;
        memcpy(d + n, s + n, m);
    }
}

static char *slots_map(size_t stride, int nslots) {
    char name[64];
    snprintf(name, sizeof name, "/slot-copy-%d", (int)getpid());
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) { perror("shm_open"); exit(1); }
    shm_unlink(name);
    size_t total = 4096 + stride * (size_t)nslots;
    if (ftruncate(fd, (off_t)total) < 0) { perror("ftruncate"); exit(1); }
    char *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) { perror("mmap"); exit(1); }
    close(fd);
    memset(base, 1, total); /* every page mapped */
    return base + 4096;
}

static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
static double pct(double *v, int n, int p) { qsort(v, (size_t)n, sizeof *v, cmp); return v[n * p / 100]; }

static void copy_mode(size_t n, int nslots, int reps) {
    size_t stride = (n + 4096 + 4095) / 4096 * 4096; /* frame + 4 KiB of metadata, page-aligned */
    char *slots = slots_map(stride, nslots), *src = malloc(n);
    memset(src, 2, n);
    enum { NF = 6 };
    const char *names[NF] = {"memcpy (glibc)", "rep movsb", "AVX2 non-temporal", "AVX-512 stores", "backward 64 KiB",
                             "last 1 MiB first"};
    copy_fn fns[NF] = {glibc, movsb, nt_avx2, avx512, backward, tail_first};
    double best[NF][3];
    for (int f = 0; f < NF; f++) best[f][0] = best[f][1] = best[f][2] = 1e18;
    volatile uint64_t sink = 0;
    for (int r = 0; r < reps; r++)
        for (int g = 0; g < NF; g++)
            for (int k = 0, f = (g + r) % NF; k < 12; k++) { /* 12 frames in a row: 4 settle the slots */
                char *dst = slots + stride * (size_t)(k % nslots);
                uint64_t t0 = now_ns();
                memset(src, r + k, n);
                uint64_t t1 = now_ns();
                fns[f](dst, src, n);
                uint64_t t2 = now_ns();
                uint64_t acc = 0;
                for (size_t i = 0; i + 8 <= n; i += 64) acc += *(volatile uint64_t *)(dst + i);
                sink += acc;
                uint64_t t3 = now_ns(), t[3] = {t2 - t1, t1 - t0, t3 - t2};
                for (int j = 0; k >= 4 && j < 3; j++)
                    if (t[j] / 1e3 < best[f][j]) best[f][j] = t[j] / 1e3;
            }
    printf("%zu bytes, %d slot(s) in turn, source %% 4096 = %zu; fastest of %d:\n", n, nslots,
           (size_t)((uintptr_t)src % 4096), reps * 8);
    for (int f = 0; f < NF; f++)
        printf("  %-18s copy %8.1f us | fill before %7.1f us | read after %7.1f us\n", names[f], best[f][0],
               best[f][1], best[f][2]);
}

typedef struct { _Atomic uint64_t pub; char pad[56]; _Atomic uint64_t ack; char pad2[56]; _Atomic uint64_t check_ns; _Atomic int stop; } Ctl;

static void handoff_mode(size_t n, int frames, int rounds) {
    size_t stride = (n + 4096 + 4095) / 4096 * 4096;
    Ctl *c = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    char *slots = slots_map(stride, 3);
    pid_t reader = fork();
    if (reader == 0) { /* check every word of each new frame, then acknowledge it */
        uint64_t last = 0;
        while (!atomic_load(&c->stop)) {
            uint64_t p = atomic_load(&c->pub);
            if (p >> 8 == last) continue;
            last = p >> 8;
            uint64_t t0 = now_ns(), bad = 0;
            const uint64_t *w = (const uint64_t *)(slots + stride * (p & 255));
            for (size_t i = 0; i < n / 8; i++) bad |= w[i] ^ w[0];
            atomic_store(&c->check_ns, now_ns() - t0 + (bad ? 1 : 0));
            atomic_store(&c->ack, last);
        }
        _exit(0);
    }
    char *src = malloc(n);
    double *copy = malloc(sizeof(double) * (size_t)frames), *check = malloc(sizeof(double) * (size_t)frames);
    const char *names[] = {"two in turn", "the one just read", "three in turn"};
    uint64_t count = 0;
    printf("%zu bytes, writer and reader processes taking turns; p10/p50 over %d frames:\n", n, frames);
    for (int r = 0; r < rounds; r++)
        for (int policy = 0; policy < 3; policy++)
            for (int f = -4; f < frames; f++) { /* 4 unmeasured frames settle the caches */
                memset(src, (int)count, n);
                int slot = policy == 0 ? (int)(count % 2) : policy == 1 ? 0 : (int)(count % 3);
                uint64_t t0 = now_ns();
                memcpy(slots + stride * (size_t)slot, src, n);
                uint64_t t1 = now_ns();
                count++;
                atomic_store(&c->pub, (count << 8) | (uint64_t)slot);
                while (atomic_load(&c->ack) != count) {}
                if (f >= 0) {
                    copy[f] = (t1 - t0) / 1e3;
                    check[f] = atomic_load(&c->check_ns) / 1e3;
                }
                if (f == frames - 1)
                    printf("  round %d %-18s copy %7.1f / %7.1f us | reader's check %7.1f / %7.1f us\n", r,
                           names[policy], pct(copy, frames, 10), pct(copy, frames, 50), pct(check, frames, 10),
                           pct(check, frames, 50));
            }
    atomic_store(&c->stop, 1);
    waitpid(reader, NULL, 0);
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "copy") == 0)
        copy_mode(strtoull(argv[2], NULL, 10), atoi(argv[3]), atoi(argv[4]));
    else if (argc == 5 && strcmp(argv[1], "handoff") == 0)
        handoff_mode(strtoull(argv[2], NULL, 10), atoi(argv[3]), atoi(argv[4]));
    else {
        fprintf(stderr, "usage: %s copy BYTES NSLOTS REPS | handoff BYTES FRAMES ROUNDS\n", argv[0]);
        return 2;
    }
    return 0;
}
