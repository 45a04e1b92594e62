// python/_released_gil.hpp: the GIL released around lnorm's native work, with a way back that is safe
// at interpreter exit, and the check that refuses subinterpreters. Shared by _lnorm and _lnorm_cuda.
//
// Why not nanobind's gil_scoped_release: at exit, CPython ends a daemon thread that tries to take the
// GIL back after finalization has started (PyThread_exit_thread, a forced unwind). The unwind runs
// into the noexcept destructor of the guard, or into nanobind's catch-all, and the process aborts
// ("terminate called without an active exception", exit code 134). So lnorm closes a gate at exit,
// from an atexit hook, which runs before finalization starts: a thread that comes back from native
// work after that parks for good instead of asking for the GIL (the process is about to end; the
// thread that closed the gate, the one finishing the interpreter, passes). Threads already past the
// gate when it closes are waited for, so none is inside PyEval_RestoreThread once finalization
// begins.
#pragma once

#include <Python.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace lnorm_py {

struct exit_gate {
  std::mutex m;
  std::condition_variable cv;
  bool closed = false;
  int returning = 0;  // threads between the gate and holding the GIL again
  std::thread::id closer;
};

// Never destroyed: a parked thread still refers to it while the process runs its exit handlers.
inline exit_gate*& gate_slot() noexcept {
  static exit_gate* g = new exit_gate;
  return g;
}

#if defined(__unix__) || defined(__APPLE__)
// A forked child gets a fresh gate: the parent's lock may have been held by a thread that the child
// does not have, and the parent's count of returning threads means nothing there.
inline void fresh_gate_in_child() noexcept { gate_slot() = new exit_gate; }
inline void install_gate_fork_handler() noexcept {
  static const bool done = pthread_atfork(nullptr, nullptr, &fresh_gate_in_child) == 0;
  (void)done;
}
#else
inline void install_gate_fork_handler() noexcept {}
#endif

[[noreturn]] inline void park_forever() noexcept {
  for (;;) std::this_thread::sleep_for(std::chrono::hours(24));
}

/// Releases the GIL for its lifetime: `{ lnorm_py::released_gil unlocked; kernel(...); }`, or as
/// nanobind's call_guard. Taking it back is refused after close_at_exit(): the thread parks.
class released_gil {
 public:
  released_gil() noexcept : state_(PyEval_SaveThread()) {}
  ~released_gil() {
    exit_gate& g = *gate_slot();
    {
      std::unique_lock<std::mutex> lock(g.m);
      if (g.closed && std::this_thread::get_id() != g.closer) {
        lock.unlock();
        park_forever();
      }
      ++g.returning;
    }
    PyEval_RestoreThread(state_);
    std::lock_guard<std::mutex> lock(g.m);
    if (--g.returning == 0) g.cv.notify_all();
  }
  released_gil(const released_gil&) = delete;
  released_gil& operator=(const released_gil&) = delete;

 private:
  PyThreadState* state_;
};

/// Closes the gate (called with the GIL held, from an atexit hook), then waits, with the GIL
/// released, for the threads already past it to hold the GIL again.
inline void close_at_exit() {
  exit_gate& g = *gate_slot();
  std::unique_lock<std::mutex> lock(g.m);
  g.closed = true;
  g.closer = std::this_thread::get_id();
  if (g.returning == 0) return;
  lock.unlock();
  PyThreadState* state = PyEval_SaveThread();
  lock.lock();
  g.cv.wait(lock, [&] { return g.returning == 0; });
  lock.unlock();
  PyEval_RestoreThread(state);
}

/// Whether this code runs in the main interpreter (the one with ID 0). lnorm refuses to be imported
/// in a subinterpreter: the module is single-phase (its state, nanobind's and NumPy's are per
/// process), and calls made from a subinterpreter were seen to hang.
inline bool in_main_interpreter() noexcept { return PyInterpreterState_GetID(PyInterpreterState_Get()) == 0; }

}  // namespace lnorm_py
