// mxpress/engine/stop_signals.hpp — SIGINT, SIGTERM and SIGHUP as events,
// not handlers: the signals are blocked in every thread and read from a
// signalfd by one watcher thread, which only calls back (the runner's
// callback stores a stop level and writes each shard's eventfd, or, for
// SIGHUP, reads the configuration again: config_reload.hpp).
//
// Promises:
// - Construct it before any other thread starts: threads inherit the mask,
//   so no thread is ever interrupted by these signals and no work runs in a
//   signal handler.
// - The watcher's loop ends when stop() is called (an eventfd wakes it) or
//   the object is destroyed; it counts stop signals, so the callback can
//   tell a first signal (drain) from a second (stop at once). SIGHUP is not
//   one: its callback gets a count of 0.
#pragma once

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <functional>
#include <system_error>
#include <thread>

#include "mxpress/io/unique_fd.hpp"

namespace mxpress::engine {

class stop_signals {
public:
    using callback = std::function<void(int signo, unsigned count)>;

    stop_signals() {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGHUP);
        if (int e = ::pthread_sigmask(SIG_BLOCK, &set, nullptr); e != 0) {
            throw std::system_error(e, std::generic_category(), "pthread_sigmask");
        }
        _sigfd = io::unique_fd(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
        _quit = io::unique_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!_sigfd || !_quit) {
            throw std::system_error(errno, std::generic_category(), "signalfd");
        }
    }
    stop_signals(const stop_signals&) = delete;
    stop_signals& operator=(const stop_signals&) = delete;
    ~stop_signals() { stop(); }

    // Starts the watcher; `on_signal` runs on its thread.
    void start(callback on_signal) {
        _on_signal = std::move(on_signal);
        _thread = std::thread([this] { watch(); });
    }

    void stop() {
        if (_thread.joinable()) {
            const std::uint64_t one = 1;
            [[maybe_unused]] const ssize_t n = ::write(_quit.get(), &one, sizeof one);
            _thread.join();
        }
    }

    // The first signal received (0: none).
    int first_signal() const noexcept { return _first.load(); }
    unsigned count() const noexcept { return _count.load(); }

private:
    void watch() {
        for (;;) {
            pollfd fds[2] = {{_sigfd.get(), POLLIN, 0}, {_quit.get(), POLLIN, 0}};
            if (::poll(fds, 2, -1) < 0) {
                if (errno == EINTR) {
                    continue;
                }
                return;
            }
            if (fds[1].revents != 0) {
                return;
            }
            signalfd_siginfo si{};
            while (::read(_sigfd.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
                if (si.ssi_signo == SIGHUP) {
                    if (_on_signal) {
                        _on_signal(SIGHUP, 0);
                    }
                    continue;
                }
                int expected = 0;
                _first.compare_exchange_strong(expected, static_cast<int>(si.ssi_signo));
                const unsigned n = _count.fetch_add(1) + 1;
                if (_on_signal) {
                    _on_signal(static_cast<int>(si.ssi_signo), n);
                }
            }
        }
    }

    io::unique_fd _sigfd;
    io::unique_fd _quit;
    callback _on_signal;
    std::atomic<int> _first{0};
    std::atomic<unsigned> _count{0};
    std::thread _thread;
};

}  // namespace mxpress::engine
