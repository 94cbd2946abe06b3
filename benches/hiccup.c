/* Does the machine stall a running thread? Spins for N seconds reading the
 * wall clock and the thread's CPU clock, and reports every pause over 1 ms:
 * a pause with CPU time to match was spent on a CPU (steal, page faults),
 * one without was the scheduler running something else. Run it beside a
 * drain (BENCHMARKS.md, seventh sitting):
 *   cc -O2 -o /tmp/hiccup benches/hiccup.c && /tmp/hiccup 7
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double ms(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 10;
    double start = ms(CLOCK_MONOTONIC), wall = start, cpu = ms(CLOCK_THREAD_CPUTIME_ID);
    int over1 = 0, over5 = 0, over10 = 0, over20 = 0;
    double longest = 0, longest_cpu = 0, on_cpu_over10 = 0, wall_over10 = 0;
    while (wall - start < seconds * 1e3) {
        double w = ms(CLOCK_MONOTONIC), c = ms(CLOCK_THREAD_CPUTIME_ID);
        double pause = w - wall, pause_cpu = c - cpu;
        if (pause > 1) {
            over1++;
            if (pause > 5) over5++;
            if (pause > 10) { over10++; wall_over10 += pause; on_cpu_over10 += pause_cpu; }
            if (pause > 20) over20++;
            if (pause > longest) { longest = pause; longest_cpu = pause_cpu; }
        }
        wall = w;
        cpu = c;
    }
    printf("pauses over 1 ms: %d, 5 ms: %d, 10 ms: %d, 20 ms: %d; longest %.1f ms (%.1f ms of it on a CPU); "
           "pauses over 10 ms: %.0f ms in all, %.0f ms on a CPU\n",
           over1, over5, over10, over20, longest, longest_cpu, wall_over10, on_cpu_over10);
    return 0;
}
