// Streams: the in-order work queues behind every op (the model PyTorch uses for CUDA, applied
// to both backends). An op is checked on the JavaScript thread, then queued as a Task on the
// stream of its device and the call returns; the stream's own native thread runs the tasks in
// the order they were queued (a CPU task may use the whole thread pool; a CUDA task launches
// kernels on the CUDA stream). Reads are tasks too, so a read sees exactly the writes queued
// before it and none queued after it.
//
// Each addon instance (the main thread, every worker_thread) has its own streams, one per
// device, started on first use.
//
// Reads wait only for the work they depend on: each storage remembers the number of the last
// queued task that writes it, and a read runs on the stream thread right after that task,
// ahead of queued work it does not depend on (a later write to the same storage was queued
// after the read, so the read still sees the values as of its call).
//
// Failures: an op that throws while running marks every storage it writes as poisoned with an
// OpFailure naming it; a task reading a poisoned storage is skipped and passes the failure on
// to what it writes; a read of a poisoned storage raises the failure. Nothing computed from a
// failed op is ever returned as data. Failures that no read has raised are kept for
// synchronize() to raise.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "tensor.h"

namespace dualroute {

class Stream;

// The storages a task reads or writes: a few, held inline (no allocation per op); more spill to
// the heap.
class StorageList {
 public:
  void push_back(Storage* s) {
    if (n_ < kInline && spill_.empty()) {
      inline_[n_++] = s;
      return;
    }
    if (spill_.empty()) spill_.assign(inline_, inline_ + n_);
    spill_.push_back(s);
    ++n_;
  }
  Storage* const* begin() const { return spill_.empty() ? inline_ : spill_.data(); }
  Storage* const* end() const { return begin() + n_; }
  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }

 private:
  static constexpr size_t kInline = 8;
  Storage* inline_[kInline];
  size_t n_ = 0;
  std::vector<Storage*> spill_;
};

class Task {
 public:
  virtual ~Task() = default;
  // The op's name, for failures.
  virtual const char* name() const = 0;
  // The work. Throws dualroute::Error (or any std::exception) on failure.
  virtual void run() = 0;
  // Called on the stream thread after run() with null, or instead of it with the failure of
  // an input, or after a throwing run() with its failure. Never throws.
  virtual void finish(const std::shared_ptr<const OpFailure>& failure) noexcept {}

  // Storages this task reads and writes (valid while the task lives: it holds its arguments).
  StorageList reads, writes;
  // Before running, wait until `after` has completed its task number `after_seq` (work queued
  // on another device that this task depends on).
  Stream* after = nullptr;
  uint64_t after_seq = 0;
};

class Stream {
 public:
  // depth: the most tasks that may wait (submit() blocks beyond it); 0 takes the device's default.
  explicit Stream(DeviceKind device, size_t depth = 0);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  DeviceKind device() const { return device_; }

  // Queues a task and returns its number (1, 2, ...). Blocks while depth() tasks wait, so a
  // program that issues work faster than it runs cannot fill memory with pending results.
  uint64_t submit(std::unique_ptr<Task> task);
  // The number of the last task queued (0: none yet).
  uint64_t submitted() const { return submitted_.load(std::memory_order_acquire); }
  uint64_t completed() const { return completed_.load(std::memory_order_acquire); }
  // True when every queued task and read has completed: the caller may touch memory directly.
  bool idle() const { return completed() == submitted() && reads_.load(std::memory_order_acquire) == 0; }
  // Blocks until task number `seq` has completed.
  void wait(uint64_t seq);
  // Runs a read as soon as task number `after` has completed, before any task queued after
  // that one runs. Reads do not count in submitted()/completed().
  void submit_read(std::unique_ptr<Task> read, uint64_t after);
  // Blocks until pred() holds; pred must turn true through a task's or a read's finish().
  // wake_at: the completed() count before which no task can make pred true (a waiter is woken
  // only by the task that reaches it, by any read, or by shutdown; 0: by every task). A waiter
  // woken by every task sleeps and wakes once per task: on a core it shares with the stream
  // thread, each wake preempts the stream thread (the JavaScript thread runs at a higher
  // priority, see lower_thread_priority), so the queued work crawls.
  void wait_until(const std::function<bool()>& pred, uint64_t wake_at = 0);
  void wait_all() { wait(submitted()); }
  // The oldest failure that no read has raised, marking every pending one as raised; null
  // when there is none.
  std::shared_ptr<const OpFailure> take_unreported();
  // Runs a task at once on the calling thread, with the same failure handling as a queued one.
  // Only while idle() (nothing queued may run before it), by the thread that submits.
  void run_now(Task& t) { execute(t); }
  // Lets the running task finish, drops the queued ones (their finish() is not called) and
  // joins the thread. Idempotent; submit() afterwards throws.
  void shutdown();

  size_t depth() const { return depth_; }
  // How many times a thread blocked in wait_until() was woken (tests: a wait behind many tasks
  // should be woken about once).
  uint64_t waiter_wakes() const { return waiter_wakes_.load(std::memory_order_relaxed); }

 private:
  void loop();
  void execute(Task& t);

  const DeviceKind device_;
  const size_t depth_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable work_cv_;   // the stream thread waits for work
  std::condition_variable space_cv_;  // a submitter waits for room in the queue
  std::condition_variable done_cv_;   // waiters wait for completions
  std::deque<std::unique_ptr<Task>> queue_;
  std::atomic<size_t> queued_{0};
  std::multimap<uint64_t, std::unique_ptr<Task>> waiting_reads_;  // by the task they follow
  std::atomic<size_t> reads_{0};                                   // waiting_reads_.size()
  std::atomic<uint64_t> submitted_{0}, completed_{0};
  bool sleeping_ = false;  // the thread is blocked on work_cv_
  // Threads blocked on done_cv_, and the smallest completed() count any of them waits for
  // (UINT64_MAX: none; reset by each wake, the waiters still short of theirs lower it again).
  std::atomic<int> waiters_{0};
  std::atomic<uint64_t> wake_at_{UINT64_MAX};
  std::atomic<uint64_t> waiter_wakes_{0};
  void wake_waiters();
  bool quit_ = false;
  bool started_ = false;
  std::mutex failures_mu_;
  std::deque<std::shared_ptr<const OpFailure>> unreported_;
};

}  // namespace dualroute
