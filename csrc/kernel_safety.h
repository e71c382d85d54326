// What every kernel in csrc/ shares so that no input can crash the process or make it allocate
// without bound:
//  * InputError: input the kernel refuses (too big for the memory budget, coordinates no unit can
//    explain). Registered as fastcsi._C.InputError (a ValueError); the Python wrappers turn it into
//    FastCSIError, the one user-facing error type.
//  * MemoryBudget: bytes a call may still allocate, charged BEFORE the allocation it stands for and
//    shared by all of the call's threads, so a hostile input ends in one InputError instead of an
//    allocation that the kernel's overcommitted OS grants and then kills the process for.
//  * run_workers: std::thread workers that never terminate the process. An exception inside a
//    worker (std::bad_alloc, InputError) stops the others and is rethrown on the calling thread; a
//    thread that cannot be started (std::system_error) just leaves its share of the tasks to the
//    workers that did start (tasks are handed out dynamically, so the result is the same).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace fastcsi {

struct InputError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// The most threads any kernel runs, whatever num_threads asks: each std::thread costs a stack (8 MiB
// of address space), and libgomp aborts the process when it cannot start a thread it was asked for,
// so an absurd request must never reach either.
constexpr int kMaxThreads = 256;

// Half the machine's physical memory: the default budget when the caller passes none (<= 0).
inline int64_t default_memory_budget() {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    if (pages <= 0 || page <= 0) return int64_t(8) << 30;
    return static_cast<int64_t>(static_cast<double>(pages) * static_cast<double>(page) / 2.0);
}

inline std::string gib(double bytes) {
    char text[32];
    std::snprintf(text, sizeof(text), "%.3g GiB", bytes / double(int64_t(1) << 30));
    return text;
}

class MemoryBudget {
   public:
    explicit MemoryBudget(int64_t max_bytes) : max_(max_bytes > 0 ? max_bytes : default_memory_budget()) {}
    int64_t max_bytes() const { return max_; }
    int64_t used() const { return used_.load(std::memory_order_relaxed); }
    // Charge `bytes`; false (and nothing charged) when that would exceed the budget. Doubles in,
    // so that a product computed from hostile sizes cannot wrap around before the comparison.
    bool charge(double bytes) {
        if (!(bytes >= 0.0) || bytes > static_cast<double>(max_)) return false;
        const int64_t amount = static_cast<int64_t>(bytes);
        int64_t before = used_.fetch_add(amount, std::memory_order_relaxed);
        if (before + amount > max_) {
            used_.fetch_sub(amount, std::memory_order_relaxed);
            return false;
        }
        return true;
    }
    // Give back bytes charged ahead of need and not used (a per-thread reservation's remainder).
    void release(int64_t bytes) {
        if (bytes > 0) used_.fetch_sub(bytes, std::memory_order_relaxed);
    }

   private:
    int64_t max_;
    std::atomic<int64_t> used_{0};
};

// body(worker, task) for every task in [0, tasks) on up to `threads` threads (the caller is worker
// 0), tasks handed out dynamically; `worker` < min(threads, tasks) indexes per-thread scratch. See the
// file comment for what happens on exceptions and on threads that cannot be started.
template <class Body>
void run_workers_indexed(int64_t threads, int64_t tasks, Body&& body) {
    const int64_t workers = std::min<int64_t>(threads, tasks);
    if (workers <= 1) {
        for (int64_t t = 0; t < tasks; ++t) body(int64_t(0), t);
        return;
    }
    std::atomic<int64_t> next{0};
    std::exception_ptr failure;
    std::mutex failure_lock;
    auto work = [&](int64_t worker) {
        try {
            for (int64_t t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) body(worker, t);
        } catch (...) {
            std::lock_guard<std::mutex> hold(failure_lock);
            if (!failure) failure = std::current_exception();
            next.store(tasks);  // the other workers stop after their current task
        }
    };
    std::vector<std::thread> pool;
    try {
        pool.reserve(workers - 1);
        for (int64_t w = 1; w < workers; ++w) pool.emplace_back(work, w);
    } catch (const std::exception&) {
        // out of threads or memory for one: the workers already running (and this one) do the rest
    }
    work(0);
    for (std::thread& thread : pool) thread.join();
    if (failure) std::rethrow_exception(failure);
}

// body(task) for every task in [0, tasks), as run_workers_indexed.
template <class Body>
void run_workers(int64_t threads, int64_t tasks, Body&& body) {
    run_workers_indexed(threads, tasks, [&](int64_t, int64_t task) { body(task); });
}

}  // namespace fastcsi
