// mxpress/engine/report.hpp — `mxpress report J1 J2 …`: the shard journals
// of one list, merged into one summary.
//
// - A row is a journal's data line number; in each journal a row's outcome
//   is its last final line, else (a stopped run) its last `deferred` line;
//   `dry-run` lines are not outcomes and are left out.
// - Across journals, a row with an outcome in more than one journal is a
//   duplicate: two shards (or two plans) sent it. The merged count takes
//   its first journal's outcome; the duplicates are listed (at most
//   report_duplicates_listed, and counted in full).
// - Rows: those with a final outcome, those left deferred (not final: run
//   the shard again with --resume), and, with --plan, the plan's rows that
//   no journal has an outcome for ("missing").
// - A torn last line (a crash mid-write) is passed over, as by --resume;
//   any other line that is not a journal line is an error naming it.
// - Delivered rows are also counted by how their message went (the
//   journal's "transfer": BDAT or DATA; "unknown" for a journal written
//   before the field existed).
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "mxpress/detail/json.hpp"
#include "mxpress/engine/journal.hpp"
#include "mxpress/mail/input_error.hpp"

namespace mxpress::engine {

inline constexpr std::size_t report_duplicates_listed = 20;

struct journal_report {
    std::string path;
    std::uint64_t runs = 0;  // header lines
    std::uint64_t rows = 0;  // rows with an outcome here
    std::map<std::string, std::uint64_t> statuses;
};

struct report_duplicate {
    std::uint64_t line = 0;
    std::string email;
    std::vector<std::string> journals;
};

struct merged_report {
    std::vector<journal_report> journals;
    std::map<std::string, std::uint64_t> statuses;      // by outcome, one per row
    std::map<std::string, std::uint64_t> delivered_by;  // delivered rows by "transfer": BDAT, DATA, unknown
    std::uint64_t rows = 0;                             // rows with an outcome
    std::uint64_t final_rows = 0;
    std::uint64_t unfinished = 0;  // left deferred
    std::uint64_t duplicates = 0;
    std::vector<report_duplicate> duplicate_list;
    std::optional<std::uint64_t> planned_rows;  // --plan: the plan's data rows
    std::uint64_t missing() const noexcept {
        return planned_rows && *planned_rows > final_rows ? *planned_rows - final_rows : 0;
    }
};

namespace detail_report {

struct row_outcome {
    std::string status;
    std::string email;
    std::string transfer;
    bool final = false;
};

// A journal's rows (line → its outcome), counted into `jr`.
inline std::unordered_map<std::uint64_t, row_outcome> read_outcomes(const std::string& path, journal_report& jr) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw mail::input_error(path, 0, fmt::format("cannot open journal: {}", std::strerror(errno)));
    }
    std::unordered_map<std::uint64_t, row_outcome> rows;
    std::string text;
    std::uint64_t line_no = 0;
    while (std::getline(in, text)) {
        ++line_no;
        const bool last = in.peek() == std::char_traits<char>::eof();
        std::uint64_t line = 0;
        bool header = false;
        row_outcome o;
        const std::string err =
            detail::parse_flat_json_object(text, [&](const std::string& k, const detail::json_value& v) {
                if (k == "mxpress_journal") {
                    header = true;
                } else if (k == "line" && v.type == detail::json_value::kind::number) {
                    line = std::strtoull(v.text.c_str(), nullptr, 10);
                } else if (k == "status") {
                    o.status = v.text;
                } else if (k == "email") {
                    o.email = v.text;
                } else if (k == "transfer") {
                    o.transfer = v.text;
                }
            });
        if (!err.empty() || (!header && (line == 0 || o.status.empty()))) {
            if (last && (in.eof() || !text.ends_with('}'))) {
                continue;  // a line cut by a crash
            }
            throw mail::input_error(path, line_no, "not a journal line" + (err.empty() ? "" : ": " + err));
        }
        if (header) {
            ++jr.runs;
            continue;
        }
        outcome_status s{};
        if (!parse_status(o.status, s)) {
            throw mail::input_error(path, line_no, "unknown status '" + o.status + "'");
        }
        if (s == outcome_status::dry_run) {
            continue;
        }
        o.final = is_final(s);
        auto [it, fresh] = rows.try_emplace(line, o);
        if (!fresh && (o.final || !it->second.final)) {
            it->second = o;  // the last final line counts, or the last deferral before any
        }
    }
    jr.rows = rows.size();
    for (const auto& [line, o] : rows) {
        ++jr.statuses[o.status];
    }
    return rows;
}

}  // namespace detail_report

inline merged_report merge_journals(const std::vector<std::string>& paths) {
    merged_report m;
    std::unordered_map<std::uint64_t, std::pair<detail_report::row_outcome, std::vector<std::string>>> all;
    for (const std::string& path : paths) {
        journal_report jr;
        jr.path = path;
        for (auto& [line, o] : detail_report::read_outcomes(path, jr)) {
            auto [it, fresh] = all.try_emplace(line, std::move(o), std::vector<std::string>{});
            it->second.second.push_back(path);
        }
        m.journals.push_back(std::move(jr));
    }
    std::vector<std::uint64_t> dup_lines;
    for (const auto& [line, entry] : all) {
        const auto& [o, in] = entry;
        ++m.rows;
        ++m.statuses[o.status];
        if (o.status == to_string(outcome_status::delivered)) {
            ++m.delivered_by[o.transfer.empty() ? "unknown" : o.transfer];
        }
        (o.final ? m.final_rows : m.unfinished) += 1;
        if (in.size() > 1) {
            ++m.duplicates;
            dup_lines.push_back(line);
        }
    }
    std::sort(dup_lines.begin(), dup_lines.end());
    for (std::size_t k = 0; k < dup_lines.size() && k < report_duplicates_listed; ++k) {
        const auto& [o, in] = all[dup_lines[k]];
        m.duplicate_list.push_back(report_duplicate{dup_lines[k], o.email, in});
    }
    return m;
}

inline std::string report_text(const merged_report& m) {
    std::string out = fmt::format("{} journals, {} rows with an outcome: {} final, {} left deferred", m.journals.size(),
                                  m.rows, m.final_rows, m.unfinished);
    if (m.planned_rows) {
        out += fmt::format("; the plan has {} rows, {} without a final outcome", *m.planned_rows, m.missing());
    }
    out += "\n";
    for (const auto& [status, n] : m.statuses) {
        out += fmt::format("  {:<11} {}\n", status, n);
    }
    if (!m.delivered_by.empty()) {
        std::string by;
        for (const auto& [transfer, n] : m.delivered_by) {
            by += fmt::format("{}{} by {}", by.empty() ? "" : ", ", n, transfer);
        }
        out += "delivered: " + by + "\n";
    }
    if (m.duplicates > 0) {
        out += fmt::format("DUPLICATES: {} rows have an outcome in more than one journal (sent by two shards?)\n",
                           m.duplicates);
        for (const report_duplicate& d : m.duplicate_list) {
            std::string in;
            for (const std::string& j : d.journals) {
                in += (in.empty() ? "" : ", ") + j;
            }
            out += fmt::format("  line {} ({}): {}\n", d.line, d.email, in);
        }
    } else {
        out += "duplicates: none (no row has an outcome in two journals)\n";
    }
    for (const journal_report& j : m.journals) {
        std::string by;
        for (const auto& [status, n] : j.statuses) {
            by += fmt::format("{}{} {}", by.empty() ? "" : ", ", n, status);
        }
        out += fmt::format("{}: {} rows ({}), {} runs\n", j.path, j.rows, by.empty() ? "none" : by, j.runs);
    }
    return out;
}

inline void append_counts(std::string& j, const std::map<std::string, std::uint64_t>& counts) {
    j += '{';
    bool first = true;
    for (const auto& [status, n] : counts) {
        j += first ? "" : ",";
        first = false;
        detail::append_json_string(j, status);
        j += fmt::format(":{}", n);
    }
    j += '}';
}

inline std::string report_json(const merged_report& m) {
    std::string j = fmt::format("{{\"rows\":{},\"final\":{},\"unfinished\":{},\"duplicates\":{},", m.rows, m.final_rows,
                                m.unfinished, m.duplicates);
    if (m.planned_rows) {
        j += fmt::format("\"planned_rows\":{},\"missing\":{},", *m.planned_rows, m.missing());
    }
    j += "\"statuses\":";
    append_counts(j, m.statuses);
    j += ",\"delivered_by\":";
    append_counts(j, m.delivered_by);
    j += ",\"duplicate_rows\":[";
    for (std::size_t k = 0; k < m.duplicate_list.size(); ++k) {
        const report_duplicate& d = m.duplicate_list[k];
        j += fmt::format("{}{{\"line\":{},\"email\":", k == 0 ? "" : ",", d.line);
        detail::append_json_string(j, d.email);
        j += ",\"journals\":[";
        for (std::size_t i = 0; i < d.journals.size(); ++i) {
            j += i == 0 ? "" : ",";
            detail::append_json_string(j, d.journals[i]);
        }
        j += "]}";
    }
    j += "],\"journals\":[";
    for (std::size_t k = 0; k < m.journals.size(); ++k) {
        const journal_report& jr = m.journals[k];
        j += k == 0 ? "{\"path\":" : ",{\"path\":";
        detail::append_json_string(j, jr.path);
        j += fmt::format(",\"runs\":{},\"rows\":{},\"statuses\":", jr.runs, jr.rows);
        append_counts(j, jr.statuses);
        j += '}';
    }
    j += "]}\n";
    return j;
}

}  // namespace mxpress::engine
