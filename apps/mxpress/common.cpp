// apps/mxpress/common.cpp — what several commands use: files and journal
// names, the sender and its DKIM keys, the message (a template file or one
// from parts), and the --dns, --route and --relay values.
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/net/dns.hpp"

#include "cli.hpp"

namespace mxpress::cli {

std::string read_file(const std::string& path, const char* what) {
    return mail::read_input_file(path, what);
}

mxpress::io::unique_fd open_recipients(const std::string& path) {
    mxpress::io::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
        throw input_error(path, 0, fmt::format("cannot open recipients file: {}", std::strerror(errno)));
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) == 0 && S_ISDIR(st.st_mode)) {
        throw input_error(path, 0, "recipients file is a directory");
    }
    ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    return fd;
}

// "lists/r.csv" -> "lists/r.<suffix>"
std::string journal_beside(const std::string& recipients, const std::string& suffix) {
    const std::size_t slash = recipients.rfind('/');
    const std::size_t dot = recipients.rfind('.');
    const std::string stem = (dot != std::string::npos && (slash == std::string::npos || dot > slash + 1))
                                 ? recipients.substr(0, dot)
                                 : recipients;
    return stem + "." + suffix;
}

// The journal's default suffix: with --plan, each shard has its own
// (NAME.shard-I-of-N.journal.jsonl), so a retried index resumes its own.
std::string journal_suffix(const send_options& o, const std::string& suffix) {
    if (!o.loaded_plan) {
        return suffix;
    }
    return fmt::format("shard-{}-of-{}.{}", o.shard_index, o.loaded_plan->shard_count, suffix);
}

std::uint64_t peak_rss_bytes() {
    struct rusage ru {};
    ::getrusage(RUSAGE_SELF, &ru);
    return static_cast<std::uint64_t>(ru.ru_maxrss) * 1024;
}

// Writes the --summary-json document.
void write_summary(const std::string& path, const std::string& json) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!(out << json)) {
        throw input_error(path, 0, "cannot write summary");
    }
}

mail::checked_address check_sender(const std::string& from) {
    mail::checked_address a = mail::check_address(from);
    if (!a.valid()) {
        throw std::invalid_argument(fmt::format("--from '{}': {}", from, a.error));
    }
    return a;
}

// Loads the [dkim] keys of `cfg` (null when it has none); warnings go to stderr.
std::shared_ptr<const mail::dkim::key_set> load_dkim(const engine::config& cfg) {
    if (!cfg.dkim.enabled()) {
        return nullptr;
    }
    std::vector<std::string> warnings;
    auto keys = mail::dkim::load_keys(cfg.dkim, warnings);
    for (const std::string& w : warnings) {
        std::fprintf(stderr, "mxpress: %s\n", w.c_str());
    }
    return keys;
}

// ---- A message from parts (--subject, --text, --html, --attach, --header-from) ----

void parse_parts_options(CLI::App* cmd, mail::message_parts& p) {
    cmd->add_option("--subject", p.subject, "Subject ({{field}} allowed); a message from parts instead of --message");
    cmd->add_option("--text", p.text_file, "Plain-text body file ({{field}} allowed)");
    cmd->add_option("--html", p.html_file, "HTML body file ({{field}} allowed); with --text: multipart/alternative");
    cmd->add_option("--attach", p.attachments, "Attach FILE (repeatable; type from the extension; no merging)");
    cmd->add_option("--header-from", p.header_from,
                    "From header of a message from parts, e.g. 'Town Hall <news@town.example>' (default: the "
                    "--from address)");
    cmd->add_option("--charset", p.charset,
                    "Charset of a message from parts: utf-8 (default) or iso-2022-jp (text converted per row, "
                    "7bit; a character it cannot carry makes the row invalid)");
}

// The template text: the --message file, or one built from parts once at
// start (mail/parts.hpp). `name` is what compile errors name.
std::string template_text(const std::string& message, const mail::message_parts& parts,
                          const mail::recipients_reader& reader, std::string& name) {
    if (!message.empty() && parts.any()) {
        throw std::invalid_argument(
            "--message cannot be combined with --subject, --text, --html, --attach, --header-from or --charset");
    }
    if (message.empty() && !parts.any()) {
        throw std::invalid_argument("a message is required: --message FILE, or --text FILE and/or --html FILE");
    }
    if (!message.empty()) {
        name = message;
        return read_file(message, "message template");
    }
    name = "(message parts)";
    return mail::build_template(parts, reader.columns(), reader.columns().at(reader.email_column()));
}

// ---- end of message from parts ----

// Compiles the template; --list-unsubscribe URL adds List-Unsubscribe and
// (RFC 8058 one-click) List-Unsubscribe-Post. A template with its own https
// List-Unsubscribe gets the Post header too.
mail::message_template compile_template(const std::string& text, const std::string& path,
                                        const std::vector<std::string>& columns, const std::string& unsubscribe) {
    mail::message_template t = mail::message_template::compile(text, path, columns);
    if (!unsubscribe.empty()) {
        if (t.has_header("list-unsubscribe")) {
            throw input_error(path, 0, "--list-unsubscribe given, but the template has its own List-Unsubscribe");
        }
        if (!unsubscribe.starts_with("https://") || unsubscribe.find_first_of(" <>\"") != std::string::npos) {
            throw std::invalid_argument(fmt::format(
                "--list-unsubscribe '{}': one-click unsubscribe (RFC 8058) needs an https:// URL without spaces or "
                "angle brackets",
                unsubscribe));
        }
        // Merged values are percent-encoded: a space, '>' or ',' cannot break the header.
        t.add_header("List-Unsubscribe", "<" + unsubscribe + ">", columns, true);
    }
    bool https = false;
    for (const auto& h : t.headers()) {
        if (h.lower_name == "list-unsubscribe") {
            for (const auto& seg : h.value) {
                https = https || (!seg.is_field() && t.literal(seg).find("<https://") != std::string_view::npos);
            }
        }
    }
    if (https && !t.has_header("list-unsubscribe-post")) {
        t.add_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click", columns);
    }
    return t;
}

// The run key of stable Message-IDs: the same template, recipients file and
// sender give the same IDs, in `render`, a dry run, a send and its --resume.
std::uint64_t message_id_run_key(const std::string& template_text, const std::string& recipients,
                                 const std::string& from) {
    char resolved[PATH_MAX];
    const std::string path = ::realpath(recipients.c_str(), resolved) != nullptr ? resolved : recipients;
    return mail::run_key({template_text, path, from});
}

// --dns is handed to c-ares as its CSV of servers; each must be an address
// (IP, IP:PORT or [IPV6]:PORT), checked here so that a typo is a usage error
// (exit 2) before anything starts, not a shard failure.
void check_dns_servers(const std::string& csv) {
    std::size_t start = 0;
    while (start <= csv.size() && !csv.empty()) {
        std::size_t comma = csv.find(',', start);
        if (comma == std::string::npos) {
            comma = csv.size();
        }
        std::string item = csv.substr(start, comma - start);
        std::string host = item;
        std::string port;
        if (!item.empty() && item.front() == '[') {
            const std::size_t close = item.find(']');
            if (close != std::string::npos) {
                host = item.substr(1, close - 1);
                if (close + 1 < item.size()) {
                    port = item[close + 1] == ':' ? item.substr(close + 2) : std::string("x");
                }
            }
        } else if (item.find(':') != std::string::npos && item.find(':') == item.rfind(':')) {
            host = item.substr(0, item.find(':'));
            port = item.substr(item.find(':') + 1);
        }
        mxpress::net::ip_address a;
        char* end = nullptr;
        const long p = port.empty() ? 53 : std::strtol(port.c_str(), &end, 10);
        if (!mxpress::net::ip_address::parse(host, a) || (!port.empty() && *end != '\0') || p < 1 || p > 65535) {
            throw std::invalid_argument(
                fmt::format("--dns '{}': '{}' is not a resolver address (IP, IP:PORT or [IPV6]:PORT)", csv, item));
        }
        start = comma + 1;
    }
}

std::vector<engine::route> parse_routes(const std::vector<std::string>& specs) {
    std::vector<engine::route> out;
    for (const std::string& spec : specs) {
        const std::size_t eq = spec.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
            throw std::invalid_argument(fmt::format("--route '{}': expected DOMAIN=HOST[:PORT]", spec));
        }
        engine::route r;
        r.domain = mxpress::detail::to_lower_copy(spec.substr(0, eq));
        std::string target = spec.substr(eq + 1);
        std::size_t colon = target.rfind(':');
        if (!target.empty() && target.front() == '[') {
            // [IPv6]:PORT or [IPv6]
            const std::size_t close = target.find(']');
            if (close == std::string::npos || (close + 1 < target.size() && target[close + 1] != ':')) {
                throw std::invalid_argument(fmt::format("--route '{}': expected [IPV6]:PORT", spec));
            }
            colon = close + 1 < target.size() ? close + 1 : std::string::npos;
        } else if (colon != std::string::npos && target.find(':') != colon) {
            colon = std::string::npos;  // a bare IPv6 address, no port
        }
        if (colon != std::string::npos) {
            const std::string port = target.substr(colon + 1);
            char* end = nullptr;
            const long p = std::strtol(port.c_str(), &end, 10);
            if (port.empty() || *end != '\0' || p < 1 || p > 65535) {
                throw std::invalid_argument(fmt::format("--route '{}': bad port '{}'", spec, port));
            }
            r.port = static_cast<std::uint16_t>(p);
            target.resize(colon);
        }
        if (target.size() >= 2 && target.front() == '[' && target.back() == ']') {
            target = target.substr(1, target.size() - 2);
        }
        if (target.empty()) {
            throw std::invalid_argument(fmt::format("--route '{}': empty host", spec));
        }
        r.host = target;
        out.push_back(std::move(r));
    }
    return out;
}

// [smtp://|smtps://]HOST[:PORT]: smtps:// is implicit TLS (default port
// 465), smtp:// STARTTLS (default 587); without a scheme, port 465 means
// implicit TLS and any other STARTTLS.
engine::route parse_relay(const std::string& spec) {
    std::string rest = spec;
    int scheme = 0;  // 0 none, 1 smtp://, 2 smtps://
    if (rest.starts_with("smtps://")) {
        scheme = 2;
        rest.erase(0, 8);
    } else if (rest.starts_with("smtp://")) {
        scheme = 1;
        rest.erase(0, 7);
    }
    engine::route r;
    try {
        r = parse_routes({"*=" + rest}).at(0);
    } catch (const std::invalid_argument&) {
        throw std::invalid_argument(
            fmt::format("--relay '{}': expected [smtp://|smtps://]HOST[:PORT] (IPv6 as [ADDR]:PORT)", spec));
    }
    // parse_routes defaults to 25; a relay defaults to submission.
    const bool port_given = r.port != 25 || rest.ends_with(":25");
    if (!port_given) {
        r.port = scheme == 2 ? 465 : 587;
    }
    r.implicit_tls = scheme == 2 || (scheme == 0 && r.port == 465);
    return r;
}

}  // namespace mxpress::cli
