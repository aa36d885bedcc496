// mxpress/engine/progress.hpp — the live progress line of `send --progress`.
//
// Promises:
// - format_progress() is a pure function of a progress_counts: on a terminal
//   (tty) a bar with the percentage, `13,377 / 30,000`, the rate as
//   `17.2M/h`, the ETA as `1m23s`, then delivered / deferred / failed / in
//   flight; never longer than `width` columns (fields are dropped, least
//   useful first, then the bar, then the text is cut), so the line never
//   wraps. Not on a terminal: the same fields without the bar, for a log
//   line (the caller adds the newline; no \r, no escape codes).
// - Destinations an adaptive rule holds back show last, as
//   `held back 2 (gmail.com: scaled to 1.50/s by gmail-rate)`.
// - The total (the rows to send) is known only once the reader reached the
//   end of the recipients file: until then the line shows the rows read so
//   far (`13,377 / 20,000+ read`), no percentage, no bar and no ETA. The
//   file is not counted up front: that would read it twice.
// - terminal_width() asks the kernel (TIOCGWINSZ) and says 80 when it cannot.
#pragma once

#include <sys/ioctl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace mxpress::engine {

struct progress_counts {
    std::uint64_t done = 0;   // rows with a final outcome (delivered, failed, invalid, suppressed)
    std::uint64_t total = 0;  // rows to send, when total_known
    bool total_known = false;
    std::uint64_t read = 0;  // rows read so far (shown while the total is unknown)
    std::uint64_t delivered = 0;
    std::uint64_t deferred = 0;
    std::uint64_t failed = 0;  // bounced, expired, in doubt, invalid
    std::uint64_t in_flight = 0;
    double seconds = 0;  // since the run started
    // Destinations a rule holds back now (scaled, suspended, stopped), and
    // one of them described ("gmail.com: suspended 3h59m more by ms-block").
    std::uint64_t held = 0;
    std::string held_example;
};

// 13377 -> "13,377".
inline std::string thousands(std::uint64_t v) {
    std::string digits = std::to_string(v);
    std::string out;
    out.reserve(digits.size() + digits.size() / 3);
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i != 0 && (digits.size() - i) % 3 == 0) {
            out += ',';
        }
        out += digits[i];
    }
    return out;
}

// 17240247 -> "17.24M" (the summary's rate).
inline std::string human_count(double v) {
    if (v >= 1e9) {
        return fmt::format("{:.2f}G", v / 1e9);
    }
    if (v >= 1e6) {
        return fmt::format("{:.2f}M", v / 1e6);
    }
    if (v >= 1e3) {
        return fmt::format("{:.1f}k", v / 1e3);
    }
    return fmt::format("{:.0f}", v);
}

// Messages per hour, three significant digits: "17.2M/h", "1.80M/h", "950/h".
inline std::string human_rate(double per_hour) {
    if (!(per_hour >= 0) || std::isinf(per_hour)) {
        per_hour = 0;
    }
    const char* unit = "";
    double v = per_hour;
    if (per_hour >= 999.5e6) {
        v = per_hour / 1e9;
        unit = "G";
    } else if (per_hour >= 999.5e3) {
        v = per_hour / 1e6;
        unit = "M";
    } else if (per_hour >= 999.5) {
        v = per_hour / 1e3;
        unit = "k";
    } else {
        return fmt::format("{:.0f}/h", per_hour);
    }
    const char* f = v >= 99.95 ? "{:.0f}{}/h" : v >= 9.995 ? "{:.1f}{}/h" : "{:.2f}{}/h";
    return fmt::format(fmt::runtime(f), v, unit);
}

// A duration as people read it: "23s", "1m23s", "2h05m".
inline std::string human_duration(double seconds) {
    if (!(seconds >= 0)) {
        seconds = 0;
    }
    const auto s = static_cast<std::uint64_t>(std::min(seconds, 1e9) + 0.5);
    if (s < 60) {
        return fmt::format("{}s", s);
    }
    if (s < 3600) {
        return fmt::format("{}m{:02}s", s / 60, s % 60);
    }
    return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

inline unsigned terminal_width(int fd) {
    struct winsize ws {};
    if (::ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) {
        return ws.ws_col;
    }
    return 80;
}

// `[=====>....]`: `inner` characters between the brackets.
inline std::string progress_bar(double fraction, unsigned inner) {
    fraction = std::clamp(fraction, 0.0, 1.0);
    const auto filled = static_cast<unsigned>(fraction * inner);
    std::string bar = "[";
    bar.append(filled, '=');
    if (filled < inner) {
        bar += filled == 0 ? '.' : '>';  // the head, once something is done
        bar.append(inner - filled - 1, '.');
    }
    bar += ']';
    return bar;
}

inline std::string format_progress(const progress_counts& c, unsigned width, bool tty) {
    struct field {
        std::string text;
        int keep;  // dropped from the lowest first when the line is too long
    };
    std::vector<field> fields;
    const bool known = c.total_known;
    double fraction = 0;
    if (known) {
        fraction = c.total == 0 ? 1.0 : std::min(1.0, double(c.done) / double(c.total));
        // In integers: floor(0.58 * 100.0) is 57 in doubles (58 of 100 showed 57%).
        const auto pct =
            static_cast<unsigned>(c.total == 0 ? 100 : std::min<std::uint64_t>(100, c.done * 100 / c.total));
        fields.push_back({fmt::format("{:3}%", pct), 9});
        fields.push_back({thousands(c.done) + " / " + thousands(c.total), 9});
    } else {
        fields.push_back({thousands(c.done) + " / " + thousands(c.read) + "+ read", 9});
    }
    const double secs = std::max(1e-3, c.seconds);
    fields.push_back({human_rate(double(c.delivered) / secs * 3600.0), 8});
    if (known) {
        std::string eta = "ETA --";
        if (c.done >= c.total) {
            eta = "ETA 0s";
        } else if (c.done > 0) {
            eta = "ETA " + human_duration(double(c.total - c.done) * secs / double(c.done));
        }
        fields.push_back({std::move(eta), 8});
    }
    fields.push_back({"delivered " + thousands(c.delivered), 5});
    fields.push_back({"deferred " + thousands(c.deferred), 4});
    fields.push_back({"failed " + thousands(c.failed), 4});
    fields.push_back({"in flight " + thousands(c.in_flight), 3});
    if (c.held > 0) {
        // What holds the batch back: worth more than the counts.
        fields.push_back(
            {"held back " + thousands(c.held) + (c.held_example.empty() ? "" : " (" + c.held_example + ")"), 6});
    }

    const std::string sep = "  ";
    auto joined_size = [&]() {
        std::size_t n = 0;
        for (const field& f : fields) {
            n += (n == 0 ? 0 : sep.size()) + f.text.size();
        }
        return n;
    };
    auto join = [&]() {
        std::string out;
        for (const field& f : fields) {
            if (!out.empty()) {
                out += sep;
            }
            out += f.text;
        }
        return out;
    };
    if (!tty) {
        return join();
    }
    constexpr unsigned bar_min = 10, bar_max = 30;
    const bool want_bar = known;
    const std::size_t bar_room = want_bar ? bar_min + 2 + sep.size() : 0;
    while (joined_size() + bar_room > width && fields.size() > 1) {
        // The last of the fields least worth keeping goes first.
        auto drop = fields.begin();
        for (auto it = fields.begin(); it != fields.end(); ++it) {
            if (it->keep <= drop->keep) {
                drop = it;
            }
        }
        if (drop->keep >= 8) {
            break;  // what is left is worth more than the bar
        }
        fields.erase(drop);
    }
    std::string line;
    const std::size_t text = joined_size();
    if (want_bar && text + bar_room <= width) {
        const auto inner = static_cast<unsigned>(std::min<std::size_t>(bar_max, width - text - 2 - sep.size()));
        line = progress_bar(fraction, inner) + sep;
    }
    line += join();
    if (line.size() > width) {
        line.resize(width);
    }
    return line;
}

}  // namespace mxpress::engine
