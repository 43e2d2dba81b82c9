// Minimal loops for benchmarks/sum_ceiling.py: the least work per element of a sum as accurate as
// safe_sum's, in plain C++ outside memory_ops (no blocks, states, flag reads or dispatch), next to a
// plain read of the same bytes. Each gives one contiguous part of [0, n) to each OpenMP thread.
//   bare_read      n float64 summed plainly in four 512-bit accumulators (as the read limit's loop)
//   bare_widen     n float32, each widened to float64 and added (safe_sum's float32 pass)
//   bare_two_sum   n float64 with the exact error of each addition kept (safe_sum's float64 pass):
//                  the operands ordered by magnitude (vrangepd), then Dekker's Fast2Sum
// The loops are written for AVX-512 (the machine the README's numbers come from; AVX-512DQ for
// bare_two_sum); without it each is a plain scalar sum, and sum_ceiling.py says so.
// sum_ceiling.py builds it with the host compiler: c++ -O2 -march=native -fopenmp -shared -fPIC.
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// The sum of part(begin, end) over the threads' parts of [0, n), each part a multiple of 64 elements
// but the last.
template <class Part>
double parts(long n, Part part)
{
    double total = 0.0;
#pragma omp parallel reduction(+ : total)
    {
        const long t = omp_get_thread_num(), k = omp_get_num_threads();
        const long each = (n / k) / 64 * 64;
        total += part(t * each, t == k - 1 ? n : (t + 1) * each);
    }
    return total;
}

}  // namespace

extern "C" double bare_read(const double* x, long n)
{
    return parts(n, [x](long i, long end) {
        double total = 0.0;
#if defined(__AVX512F__)
        __m512d s[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
        for (; i + 32 <= end; i += 32)
#pragma GCC unroll 4
            for (int k = 0; k < 4; ++k) s[k] = _mm512_add_pd(s[k], _mm512_loadu_pd(x + i + 8 * k));
        double l[8];  // (not _mm512_reduce_add_pd: GCC 12 warns of an uninitialized variable in it)
        _mm512_storeu_pd(l, _mm512_add_pd(_mm512_add_pd(s[0], s[1]), _mm512_add_pd(s[2], s[3])));
        for (double v : l) total += v;
#endif
        for (; i < end; ++i) total += x[i];
        return total;
    });
}

extern "C" double bare_widen(const float* x, long n)
{
    return parts(n, [x](long i, long end) {
        double total = 0.0;
#if defined(__AVX512F__)
        // 256-bit conversions (Zen 4 double-pumps the 512-bit one), additions on the multiply-add pipes
        __m256d s[8];
        for (auto& v : s) v = _mm256_setzero_pd();
        __m256d one = _mm256_set1_pd(1.0);
        asm("" : "+v"(one));  // (else GCC folds the multiply-adds by 1 back into additions)
        for (; i + 32 <= end; i += 32)
#pragma GCC unroll 8
            for (int k = 0; k < 8; ++k) s[k] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + i + 4 * k)), one, s[k]);
        for (int k = 1; k < 8; ++k) s[0] = _mm256_add_pd(s[0], s[k]);
        double l[4];
        _mm256_storeu_pd(l, s[0]);
        total = (l[0] + l[1]) + (l[2] + l[3]);
#endif
        for (; i < end; ++i) total += x[i];
        return total;
    });
}

extern "C" double bare_two_sum(const double* x, long n)
{
    return parts(n, [x](long i, long end) {
#if defined(__AVX512DQ__)
        __m512d s[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()}, c[2] = {s[0], s[1]};
        __m512d one = _mm512_set1_pd(1.0);
        asm("" : "+v"(one));  // (else GCC folds the multiply-adds by 1 back into additions)
        for (; i + 16 <= end; i += 16)
            for (int k = 0; k < 2; ++k) {
                __m512d v = _mm512_loadu_pd(x + i + 8 * k);
                asm("" : "+v"(v));  // (one load, not one per use)
                const __m512d big = _mm512_range_pd(s[k], v, 0x7), small = _mm512_range_pd(s[k], v, 0x6);
                const __m512d t = _mm512_fmadd_pd(v, one, s[k]);  // s + v on the multiply-add pipes
                c[k] = _mm512_add_pd(c[k], _mm512_sub_pd(small, _mm512_fnmadd_pd(big, one, t)));
                s[k] = t;
            }
        double sum[8], err[8];
        _mm512_storeu_pd(sum, _mm512_add_pd(s[0], s[1]));
        _mm512_storeu_pd(err, _mm512_add_pd(c[0], c[1]));
        double total = 0.0;
        for (int j = 0; j < 8; ++j) total += sum[j] + err[j];
#else
        double total = 0.0;
#endif
        for (; i < end; ++i) total += x[i];
        return total;
    });
}

// 1 when the loops above are the AVX-512 ones (bare_two_sum's needs AVX-512DQ too).
extern "C" int bare_avx512()
{
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    return 1;
#else
    return 0;
#endif
}
