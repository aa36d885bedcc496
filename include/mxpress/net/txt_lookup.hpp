// mxpress/net/txt_lookup.hpp — blocking TXT lookups with c-ares, for
// commands that ask a few questions once (`check-sender`), not for the
// engine (whose resolver runs on the shard's ring, net/dns.hpp).
//
// Promises:
// - Every name is asked at once; the call returns when all are answered or
//   after deadline_ms in all, whichever comes first (each query is retried
//   by c-ares after timeout_ms, `tries` rounds).
// - One answer per name: found (the records, each the concatenation of its
//   character-strings, RFC 7208 §3.3 / RFC 6376 §3.6.2.2), none (NXDOMAIN or
//   no TXT record), or failed (SERVFAIL, refused, timeout …) with a reason
//   that names the name.
#pragma once

#include <chrono>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <ares.h>
#include <arpa/nameser.h>
#include <poll.h>

#include "mxpress/net/ares_channel.hpp"

namespace mxpress::net {

struct txt_answer {
    enum class status { found, none, failed };
    status state = status::failed;
    std::vector<std::string> records;
    std::string error;  // for failed: "NAME: reason"
};

struct txt_lookup_options {
    std::string servers;  // c-ares CSV ("127.0.0.1:5353"); empty: /etc/resolv.conf
    int timeout_ms = 1000;
    int tries = 3;
    int deadline_ms = 10'000;
};

// The records of one TXT answer, or none/failed. Exposed for unit tests.
inline txt_answer interpret_txt_answer(const std::string& name, int status, const unsigned char* abuf, int alen) {
    txt_answer a;
    if (status == ARES_ENOTFOUND || status == ARES_ENODATA) {
        a.state = txt_answer::status::none;
        return a;
    }
    if (status != ARES_SUCCESS) {
        a.error = name + ": " + ares_strerror(status);
        return a;
    }
    ares_txt_ext* txt = nullptr;
    const int prc = ares_parse_txt_reply_ext(abuf, alen, &txt);
    if (prc == ARES_ENODATA) {
        a.state = txt_answer::status::none;
        return a;
    }
    if (prc != ARES_SUCCESS) {
        a.error = name + ": bad TXT answer (" + ares_strerror(prc) + ")";
        return a;
    }
    for (ares_txt_ext* t = txt; t != nullptr; t = t->next) {
        if (t->record_start != 0 || a.records.empty()) {
            a.records.emplace_back();
        }
        a.records.back().append(reinterpret_cast<const char*>(t->txt), t->length);
    }
    ares_free_data(txt);
    a.state = a.records.empty() ? txt_answer::status::none : txt_answer::status::found;
    return a;
}

// Looks up the TXT records of every name. Throws std::invalid_argument for a
// bad server list, std::runtime_error when c-ares cannot start.
inline std::map<std::string, txt_answer> lookup_txt(const std::vector<std::string>& names,
                                                    const txt_lookup_options& o) {
    ares_channel channel = open_ares_channel(o.servers, o.timeout_ms, o.tries);
    struct pending {
        std::string name;
        txt_answer* out;
        int status = ARES_ETIMEOUT;
    };
    std::map<std::string, txt_answer> answers;
    std::vector<pending> jobs;
    jobs.reserve(names.size());
    for (const std::string& n : names) {
        auto [it, fresh] = answers.try_emplace(n);
        if (fresh) {
            it->second.error = n + ": no answer";
            jobs.push_back(pending{n, &it->second, ARES_ETIMEOUT});
        }
    }
    auto done = [](void* arg, int status, int /*timeouts*/, unsigned char* abuf, int alen) {
        auto* p = static_cast<pending*>(arg);
        p->status = status;
        *p->out = interpret_txt_answer(p->name, status, abuf, alen);
    };
    for (pending& p : jobs) {
        ares_query(channel, p.name.c_str(), ns_c_in, ns_t_txt, done, &p);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(o.deadline_ms);
    for (;;) {
        ares_socket_t socks[ARES_GETSOCK_MAXNUM];
        const int mask = ares_getsock(channel, socks, ARES_GETSOCK_MAXNUM);
        std::vector<pollfd> fds;
        for (int i = 0; i < ARES_GETSOCK_MAXNUM; ++i) {
            short ev = 0;
            if (ARES_GETSOCK_READABLE(mask, i)) {
                ev |= POLLIN;
            }
            if (ARES_GETSOCK_WRITABLE(mask, i)) {
                ev |= POLLOUT;
            }
            if (ev != 0) {
                fds.push_back(pollfd{socks[i], ev, 0});
            }
        }
        if (fds.empty()) {
            break;  // nothing outstanding
        }
        const auto now = std::chrono::steady_clock::now();
        if (now >= deadline) {
            ares_cancel(channel);  // calls back with ARES_ECANCELLED: failed
            break;
        }
        timeval max{};
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
        max.tv_sec = static_cast<time_t>(left / 1000);
        max.tv_usec = static_cast<suseconds_t>((left % 1000) * 1000);
        timeval tv{};
        const timeval* t = ares_timeout(channel, &max, &tv);
        const int wait_ms = static_cast<int>(t->tv_sec * 1000 + t->tv_usec / 1000) + 1;
        const int n = ::poll(fds.data(), fds.size(), wait_ms);
        if (n <= 0) {
            ares_process_fd(channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // timeouts
            continue;
        }
        for (const pollfd& p : fds) {
            const bool r = (p.revents & (POLLIN | POLLERR | POLLHUP)) != 0;
            const bool w = (p.revents & POLLOUT) != 0;
            if (r || w) {
                ares_process_fd(channel, r ? p.fd : ARES_SOCKET_BAD, w ? p.fd : ARES_SOCKET_BAD);
            }
        }
    }
    ares_destroy(channel);
    for (const pending& p : jobs) {
        if (p.status == ARES_ECANCELLED || p.status == ARES_EDESTRUCTION) {
            p.out->error = p.name + ": no answer within " + std::to_string(o.deadline_ms) + " ms";
        }
    }
    return answers;
}

}  // namespace mxpress::net
