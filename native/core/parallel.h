// The CPU thread pool. One pool per process (kernels are stateless, so every addon instance
// and worker_thread shares it). parallel_for splits [0, n) into chunks of at least `grain`
// items; the calling thread works too. A region started while another runs (a second
// worker_thread, or a nested call) runs inline on its caller instead of waiting, so the pool
// can never deadlock.
#pragma once
#include <cstdint>
#include <functional>

namespace dualroute {

// Spins (with a pause instruction) until done() holds or about 50 us have passed; returns
// whether it held. Threads that just ran out of work, or that wait for a short one, call it
// before sleeping on a condition variable: back-to-back small tasks then cost no futex round
// trip each.
bool spin_briefly(const std::function<bool()>& done);

int num_threads();
// Lowers the calling thread's scheduling priority to the compute level (DUALROUTE_COMPUTE_NICE,
// default 5): stream threads and pool workers call it, so a JavaScript thread that wakes up (a
// timer, a request, the next op to queue) gets a core at once even while every core computes.
void lower_thread_priority();
void set_num_threads(int n);  // n >= 1; restarts the workers
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace dualroute
