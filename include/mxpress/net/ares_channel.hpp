// mxpress/net/ares_channel.hpp — a c-ares channel as mxpress sets one up,
// for the engine's resolver (net/dns.hpp) and the one-shot TXT lookups
// (net/txt_lookup.hpp).
//
// Promises: the library is initialized once per process; the channel has
// the given per-try timeout and number of tries, the socket-state callback
// when one is given, and the --dns servers unless `servers` is empty (then
// /etc/resolv.conf's). Failing that, nothing is left open and it throws
// std::invalid_argument for a bad server list ("--dns 'LIST': reason"),
// std::runtime_error when c-ares cannot start.
#pragma once

#include <stdexcept>
#include <string>

#include <ares.h>

namespace mxpress::net {

inline ares_channel open_ares_channel(const std::string& servers, int timeout_ms, int tries,
                                      ares_sock_state_cb sock_state_cb = nullptr, void* sock_state_data = nullptr) {
    static const int library_init = ares_library_init(ARES_LIB_INIT_ALL);
    if (library_init != ARES_SUCCESS) {
        throw std::runtime_error(std::string("c-ares init: ") + ares_strerror(library_init));
    }
    ares_options opts{};
    opts.timeout = timeout_ms;
    opts.tries = tries;
    int mask = ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
    if (sock_state_cb != nullptr) {
        opts.sock_state_cb = sock_state_cb;
        opts.sock_state_cb_data = sock_state_data;
        mask |= ARES_OPT_SOCK_STATE_CB;
    }
    ares_channel channel = nullptr;
    const int rc = ares_init_options(&channel, &opts, mask);
    if (rc != ARES_SUCCESS) {
        throw std::runtime_error(std::string("c-ares: ") + ares_strerror(rc));
    }
    if (!servers.empty()) {
        const int s = ares_set_servers_ports_csv(channel, servers.c_str());
        if (s != ARES_SUCCESS) {
            ares_destroy(channel);
            throw std::invalid_argument("--dns '" + servers + "': " + ares_strerror(s));
        }
    }
    return channel;
}

}  // namespace mxpress::net
