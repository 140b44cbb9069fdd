#include "stream.h"

#include "parallel.h"

#include <chrono>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

namespace dualroute {
namespace {

constexpr size_t kMaxUnreported = 16;

}  // namespace

// How far the JavaScript thread may run ahead before submit() waits for room (1024 ops; the
// outputs of queued CPU ops take memory only when they run, see Storage). DUALROUTE_QUEUE_DEPTH
// overrides it.
static size_t default_depth(DeviceKind device) {
  if (const char* s = std::getenv("DUALROUTE_QUEUE_DEPTH")) {
    long v = std::atol(s);
    if (v >= 1) return static_cast<size_t>(v);
  }
  (void)device;
  return 1024;
}

Stream::Stream(DeviceKind device, size_t depth) : device_(device), depth_(depth ? depth : default_depth(device)) {}

Stream::~Stream() { shutdown(); }

uint64_t Stream::submit(std::unique_ptr<Task> task) {
  std::unique_lock<std::mutex> lk(mu_);
  DR_CHECK(!quit_, Internal, "a stream was used after it shut down");
  if (!started_) {
    started_ = true;
    thread_ = std::thread([this] { loop(); });
  }
  space_cv_.wait(lk, [&] { return quit_ || queue_.size() < depth_; });
  DR_CHECK(!quit_, Internal, "a stream was used after it shut down");
  queue_.push_back(std::move(task));
  queued_.fetch_add(1, std::memory_order_release);
  const uint64_t seq = submitted_.fetch_add(1, std::memory_order_acq_rel) + 1;
  const bool wake = sleeping_;
  lk.unlock();
  if (wake) work_cv_.notify_one();
  return seq;
}

void Stream::wait(uint64_t seq) {
  wait_until([&] { return completed() >= seq; }, seq);
}

void Stream::wait_until(const std::function<bool()>& pred, uint64_t wake_at) {
  if (pred()) return;
  if (spin_briefly(pred)) return;
  std::unique_lock<std::mutex> lk(mu_);
  waiters_.fetch_add(1);
  for (;;) {
    // Announce the count first, then test pred: the stream thread counts a completion first,
    // then reads the count (both behind full fences), so one of the two sees the other and a
    // completion that makes pred true is never missed.
    uint64_t cur = wake_at_.load();
    while (wake_at < cur && !wake_at_.compare_exchange_weak(cur, wake_at)) {
    }
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (pred() || (quit_ && !started_)) break;
    done_cv_.wait(lk);
    waiter_wakes_.fetch_add(1, std::memory_order_relaxed);
  }
  waiters_.fetch_sub(1);
}

void Stream::wake_waiters() {
  {
    // Under mu_: every waiter is either asleep on done_cv_ or yet to announce its count.
    std::lock_guard<std::mutex> lk(mu_);
    wake_at_.store(UINT64_MAX);
  }
  done_cv_.notify_all();
}

void Stream::submit_read(std::unique_ptr<Task> read, uint64_t after) {
  std::unique_lock<std::mutex> lk(mu_);
  DR_CHECK(!quit_, Internal, "a stream was used after it shut down");
  if (!started_) {
    started_ = true;
    thread_ = std::thread([this] { loop(); });
  }
  waiting_reads_.emplace(after, std::move(read));
  reads_.fetch_add(1, std::memory_order_release);
  const bool wake = sleeping_;
  lk.unlock();
  if (wake) work_cv_.notify_one();
}

std::shared_ptr<const OpFailure> Stream::take_unreported() {
  std::lock_guard<std::mutex> lk(failures_mu_);
  std::shared_ptr<const OpFailure> first;
  for (auto& f : unreported_) {
    if (!f->reported.exchange(true) && !first) first = f;
  }
  unreported_.clear();
  return first;
}

void Stream::shutdown() {
  std::deque<std::unique_ptr<Task>> dropped;
  std::multimap<uint64_t, std::unique_ptr<Task>> dropped_reads;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (quit_ && !thread_.joinable()) return;
    quit_ = true;
    dropped.swap(queue_);
    dropped_reads.swap(waiting_reads_);
    queued_.store(0);
    reads_.store(0);
  }
  work_cv_.notify_all();
  space_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard<std::mutex> lk(mu_);
    started_ = false;
    // the dropped tasks count as done, so no waiter hangs
    completed_.store(submitted_.load());
  }
  done_cv_.notify_all();
  dropped.clear();  // frees their arguments (storages) outside the lock
  dropped_reads.clear();
}

void Stream::loop() {
  lower_thread_priority();
  for (;;) {
    std::unique_ptr<Task> task;
    std::vector<std::unique_ptr<Task>> reads;
    {
      std::unique_lock<std::mutex> lk(mu_);
      if (queue_.empty() && waiting_reads_.empty() && !quit_) {
        lk.unlock();
        spin_briefly([&] {
          return queued_.load(std::memory_order_acquire) != 0 || reads_.load(std::memory_order_acquire) != 0;
        });
        lk.lock();
        sleeping_ = true;
        work_cv_.wait(lk, [&] { return quit_ || !queue_.empty() || !waiting_reads_.empty(); });
        sleeping_ = false;
      }
      if (quit_) return;
      // reads whose task is done go first: they wait for nothing else
      const uint64_t done = completed_.load(std::memory_order_acquire);
      while (!waiting_reads_.empty() && waiting_reads_.begin()->first <= done) {
        reads.push_back(std::move(waiting_reads_.begin()->second));
        waiting_reads_.erase(waiting_reads_.begin());
      }
      if (reads.empty()) {
        if (queue_.empty()) continue;  // (defensive: a waiting read is always ready here)
        task = std::move(queue_.front());
        queue_.pop_front();
        queued_.fetch_sub(1, std::memory_order_release);
        if (queue_.size() + 1 == depth_) space_cv_.notify_one();
      }
    }
    if (!reads.empty()) {
      for (auto& r : reads) {
        execute(*r);
        r.reset();
        reads_.fetch_sub(1, std::memory_order_acq_rel);
      }
      // a read's finish() set its waiter's flag above: the same order as for a task below
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (waiters_.load()) wake_waiters();
    } else {
      if (task->after) task->after->wait(task->after_seq);
      execute(*task);
      task.reset();  // frees what only this task still held (before the completion is visible)
      const uint64_t done = completed_.fetch_add(1) + 1;
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (waiters_.load() && done >= wake_at_.load()) wake_waiters();
    }
  }
}

void Stream::execute(Task& t) {
  std::shared_ptr<const OpFailure> failure;
  for (Storage* s : t.reads) {
    if (auto f = s->poison()) {
      failure = std::move(f);
      break;
    }
  }
  if (!failure) {
    std::shared_ptr<OpFailure> own;
    try {
      t.run();
    } catch (const Error& e) {
      own = std::make_shared<OpFailure>(e.code(), t.name(), e.what());
    } catch (const std::bad_alloc&) {
      own = std::make_shared<OpFailure>(ErrorCode::Memory, t.name(), "out of memory");
    } catch (const std::exception& e) {
      own = std::make_shared<OpFailure>(ErrorCode::Internal, t.name(), std::string("internal error: ") + e.what());
    } catch (...) {
      own = std::make_shared<OpFailure>(ErrorCode::Internal, t.name(), "internal error: unknown exception");
    }
    if (own) {
      std::lock_guard<std::mutex> lk(failures_mu_);
      if (unreported_.size() == kMaxUnreported) unreported_.pop_front();
      unreported_.push_back(own);
      failure = std::move(own);
    }
  }
  if (failure) {
    for (Storage* s : t.writes) s->set_poison(failure);
  }
  t.finish(failure);
}

}  // namespace dualroute
