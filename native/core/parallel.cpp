#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include <chrono>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define DR_CPU_RELAX() _mm_pause()
#else
#define DR_CPU_RELAX() std::this_thread::yield()
#endif

#if defined(__linux__)
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace dualroute {
namespace {

int default_threads() {
  if (const char* s = std::getenv("DUALROUTE_NUM_THREADS")) {
    int v = std::atoi(s);
    if (v >= 1) return std::min(v, 1024);
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

class Pool {
 public:
  explicit Pool(int n) { start(n); }
  ~Pool() { stop(); }

  int size() const { return size_; }

  void resize(int n) {
    std::lock_guard<std::mutex> region(region_mu_);
    stop();
    start(n);
  }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(grain, 1);
    int64_t max_chunks = (n + grain - 1) / grain;
    std::unique_lock<std::mutex> region(region_mu_, std::try_to_lock);
    if (size_ <= 1 || max_chunks <= 1 || !region.owns_lock() || in_worker_) {
      fn(0, n);
      return;
    }
    // A few chunks per thread balance uneven work without much scheduling cost.
    int64_t chunks = std::min<int64_t>(max_chunks, static_cast<int64_t>(size_) * 4);
    int64_t chunk = (n + chunks - 1) / chunks;
    chunks = (n + chunk - 1) / chunk;
    bool wake;
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &fn;
      job_n_ = n;
      job_chunk_ = chunk;
      job_chunks_ = chunks;
      next_.store(0);
      done_.store(0);
      generation_.fetch_add(1, std::memory_order_release);
      wake = sleepers_ > 0;
    }
    if (wake) cv_.notify_all();
    work();
    const int64_t all = chunks;
    if (!spin_briefly([&] { return done_.load(std::memory_order_acquire) == all; })) {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, [&] { return done_.load() == all; });
    }
    // The region ends only when no worker is inside work() any more: a worker that claimed a
    // chunk index past the end of this region must not compare it with the next region's
    // counters (it would run a chunk of the next region twice, and count it twice, so the next
    // caller could return early or wait forever for a count it has passed).
    std::unique_lock<std::mutex> lk(mu_);
    job_ = nullptr;
    done_cv_.wait(lk, [&] { return active_ == 0; });
    std::exception_ptr err;
    {
      std::lock_guard<std::mutex> elk(err_mu_);
      std::swap(err, error_);
    }
    if (err) std::rethrow_exception(err);
  }

 private:
  void start(int n) {
    size_ = std::max(1, n);
    quit_ = false;
    for (int i = 1; i < size_; ++i) threads_.emplace_back([this] { loop(); });
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

  // Takes chunks until none is left. A chunk that throws is recorded and rethrown by run()
  // on the calling thread: an exception must never escape a worker (that would abort).
  void work() {
    for (;;) {
      int64_t c = next_.fetch_add(1);
      if (c >= job_chunks_) return;
      int64_t b = c * job_chunk_, e = std::min(job_n_, b + job_chunk_);
      try {
        (*job_)(b, e);
      } catch (...) {
        std::lock_guard<std::mutex> lk(err_mu_);
        if (!error_) error_ = std::current_exception();
      }
      if (done_.fetch_add(1) + 1 == job_chunks_) {
        std::lock_guard<std::mutex> lk(mu_);
        done_cv_.notify_all();
      }
    }
  }

  void loop() {
    lower_thread_priority();
    in_worker_ = true;
    uint64_t seen = generation_.load(std::memory_order_acquire);
    for (;;) {
      if (!spin_briefly([&] { return generation_.load(std::memory_order_acquire) != seen; })) {
        std::unique_lock<std::mutex> lk(mu_);
        ++sleepers_;
        cv_.wait(lk, [&] { return quit_ || generation_.load() != seen; });
        --sleepers_;
      }
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (quit_) return;
        seen = generation_.load();
        if (!job_) continue;  // that region is over already
        ++active_;            // run() waits for this worker to leave the region
      }
      work();
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (--active_ == 0) done_cv_.notify_all();
      }
    }
  }

  int size_ = 1;
  std::vector<std::thread> threads_;
  std::mutex region_mu_;  // one parallel region at a time
  std::mutex mu_, err_mu_;
  std::exception_ptr error_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0, job_chunk_ = 0, job_chunks_ = 0;
  std::atomic<int64_t> next_{0}, done_{0};
  std::atomic<uint64_t> generation_{0};
  int sleepers_ = 0;  // workers blocked on cv_ (under mu_)
  int active_ = 0;    // workers inside work() of the current region (under mu_)
  bool quit_ = false;
  static thread_local bool in_worker_;
};

thread_local bool Pool::in_worker_ = false;

Pool& pool() {
  static Pool* p = new Pool(default_threads());  // leaked on purpose: no join at process exit
  return *p;
}

}  // namespace

bool spin_briefly(const std::function<bool()>& done) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
  for (int i = 0;; ++i) {
    if (done()) return true;
    if ((i & 63) == 63 && std::chrono::steady_clock::now() >= end) return false;
    DR_CPU_RELAX();
  }
}

int num_threads() { return pool().size(); }

void lower_thread_priority() {
#if defined(__linux__)
  static const int nice = [] {
    const char* s = std::getenv("DUALROUTE_COMPUTE_NICE");
    int v = s ? std::atoi(s) : 5;
    return std::max(0, std::min(v, 19));
  }();
  if (nice == 0) return;
  // On Linux a thread is a task with its own nice value; raising it needs no privilege.
  const pid_t tid = static_cast<pid_t>(syscall(SYS_gettid));
  const int cur = getpriority(PRIO_PROCESS, static_cast<id_t>(tid));
  setpriority(PRIO_PROCESS, static_cast<id_t>(tid), std::min(19, cur + nice));
#endif
}
void set_num_threads(int n) { pool().resize(n); }
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  pool().run(n, grain, fn);
}

}  // namespace dualroute
