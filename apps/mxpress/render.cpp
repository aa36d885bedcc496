// apps/mxpress/render.cpp — the commands that print and send nothing:
// `render` (one recipient's message), `dkim-record`, `check-sender`,
// `check-config`, `rules` and `explain-reply`.
#include <algorithm>
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/engine/sender_check.hpp"
#include "mxpress/smtp/reply.hpp"

#include "cli.hpp"

namespace mxpress::cli {

int run_render(const render_options& o) {
    const std::string& recipients = o.recipients;
    const std::uint64_t line = o.line;
    const auto sender = check_sender(o.from);
    const engine::config cfg = o.config.empty() ? engine::config{} : engine::load_config(o.config);
    const mxpress::io::unique_fd rfd = open_recipients(recipients);
    mail::recipients_reader reader(mail::csv_reader::from_fd(rfd.get()), recipients);
    std::string template_name;
    const std::string text = template_text(o.message, o.parts, reader, template_name);
    const mail::message_template tmpl = compile_template(text, template_name, reader.columns(), o.list_unsubscribe);
    mail::renderer_options ropts;
    ropts.from = sender.address;
    ropts.dkim = load_dkim(cfg);
    ropts.message_id_run_key = message_id_run_key(text, recipients, sender.address);
    mail::renderer renderer(tmpl, ropts);
    mail::recipient_row row;
    while (reader.next(row)) {
        if (row.line < line) {
            continue;
        }
        if (row.line > line) {
            break;
        }
        if (!row.valid()) {
            std::fprintf(stderr, "%s:%llu: invalid row: %s\n", recipients.c_str(),
                         static_cast<unsigned long long>(line), row.error.c_str());
            return exit_unfinished;
        }
        const auto addr = mail::check_address(row.email);
        if (!addr.valid()) {
            std::fprintf(stderr, "%s:%llu: invalid address: %s\n", recipients.c_str(),
                         static_cast<unsigned long long>(line), addr.error.c_str());
            return exit_unfinished;
        }
        std::string out;
        const auto r = renderer.render(*row.fields, out, row.line);
        if (!r.ok()) {
            std::fprintf(stderr, "%s:%llu: cannot render: %s\n", recipients.c_str(),
                         static_cast<unsigned long long>(line), r.error.c_str());
            return exit_unfinished;
        }
        std::fwrite(out.data(), 1, out.size(), stdout);
        return exit_ok;
    }
    std::fprintf(stderr, "%s: no recipient row starts at line %llu (line 1 is the header)\n", recipients.c_str(),
                 static_cast<unsigned long long>(line));
    return exit_usage;
}

// `dkim-record`: the TXT record(s) to publish for a key file, or for every
// key of a configuration.
int run_dkim_record(const std::string& key_file, const std::string& config_path, const std::string& domain,
                    const std::string& selector) {
    std::vector<mail::dkim::loaded_key> keys;
    std::vector<std::string> warnings;
    if (!key_file.empty()) {
        mail::dkim::loaded_key k = mail::dkim::load_key(key_file, warnings);
        k.domain = domain;
        k.selector = selector;
        keys.push_back(std::move(k));
    } else {
        const engine::config cfg = engine::load_config(config_path);
        if (!cfg.dkim.enabled()) {
            throw input_error(config_path, 0, "no [[dkim.key]] in this configuration");
        }
        keys = mail::dkim::load_keys(cfg.dkim, warnings)->keys;
    }
    for (const std::string& w : warnings) {
        std::fprintf(stderr, "mxpress: %s\n", w.c_str());
    }
    for (const mail::dkim::loaded_key& k : keys) {
        const std::string value = mail::dkim::txt_record(k);
        if (k.selector.empty() || k.domain.empty()) {
            std::fprintf(stdout, "%s\n", value.c_str());
            continue;
        }
        // Zone-file form, split into strings of at most 255 octets (RFC 1035 §3.3.14).
        std::string strings;
        for (std::size_t i = 0; i < value.size(); i += 255) {
            strings += fmt::format("{}\"{}\"", strings.empty() ? "" : " ", value.substr(i, 255));
        }
        std::fprintf(stdout, "%s._domainkey.%s. IN TXT ( %s )\n", k.selector.c_str(), k.domain.c_str(),
                     strings.c_str());
    }
    return exit_ok;
}

// `check-sender`: what DNS publishes for the sender against the [dkim] keys
// of --config (engine/sender_check.hpp): DMARC and alignment for
// --header-from's domain (default: --from's), SPF for --from's (the
// envelope); exit 2 when a finding is fatal.
int run_check_sender(const std::string& config_path, const std::string& from, const std::string& header_from,
                     const std::string& dns) {
    check_dns_servers(dns);
    // The domain of an address or mailbox ("Town Hall <news@town.example>"), or
    // an error naming the option.
    auto domain_of = [](const char* option, const std::string& value) {
        const std::string d = mail::dkim::from_domain(value);
        if (d.empty() || d.find('.') == std::string::npos) {
            throw std::invalid_argument(
                fmt::format("check-sender: {} '{}' is not an address user@domain", option, value));
        }
        return d;
    };
    engine::sender_check::sender_domains sender;
    sender.envelope = domain_of("--from", from);
    sender.header_from = header_from.empty() ? sender.envelope : domain_of("--header-from", header_from);
    const std::string& domain = sender.header_from;
    const engine::config cfg = engine::load_config(config_path);
    std::vector<engine::sender_check::finding> findings;
    std::vector<engine::sender_check::configured_key> keys;
    for (const mail::dkim::key_spec& spec : cfg.dkim.keys) {
        engine::sender_check::configured_key ck;
        ck.spec = spec;
        std::vector<std::string> warnings;
        try {
            ck.key = mail::dkim::load_key(spec.key_file, warnings);
        } catch (const input_error& e) {
            ck.error = e.describe();
        }
        for (const std::string& w : warnings) {
            if (w.find(" bits; ") == std::string::npos) {  // the key's length is a finding of its own
                findings.push_back({engine::sender_check::severity::warning, w});
            }
        }
        keys.push_back(std::move(ck));
    }
    // The public suffix list, read once; without it check() warns and falls back.
    engine::sender_check::context ctx;
    ctx.now = std::time(nullptr);
    const auto psl = engine::public_suffix::load(engine::public_suffix::debian_path, ctx.psl_error);
    ctx.psl = psl ? &*psl : nullptr;
    mxpress::net::txt_lookup_options lo;
    lo.servers = dns;
    const auto txt = mxpress::net::lookup_txt(engine::sender_check::names_to_query(cfg.dkim, sender, ctx), lo);
    for (auto& f : engine::sender_check::check(cfg.dkim, keys, sender, txt, ctx)) {
        findings.push_back(std::move(f));
    }
    std::size_t counts[3] = {};
    for (const engine::sender_check::finding& f : findings) {
        ++counts[static_cast<int>(f.level)];
        std::fprintf(stdout, "%-7s  %s\n", engine::sender_check::to_string(f.level), f.text.c_str());
    }
    const std::string envelope =
        sender.envelope == domain ? std::string{} : fmt::format(" (envelope {})", sender.envelope);
    std::fprintf(stdout, "check-sender %s%s: %zu ok, %zu warning%s, %zu fatal\n", domain.c_str(), envelope.c_str(),
                 counts[0], counts[1], counts[1] == 1 ? "" : "s", counts[2]);
    return counts[2] > 0 ? exit_usage : exit_ok;
}

int run_check_config(const std::string& path, bool keys, const std::string& domain, const std::string& mx) {
    if (keys) {
        std::fputs(engine::describe_keys_markdown().c_str(), stdout);
        return exit_ok;
    }
    if (path.empty()) {
        throw std::invalid_argument("check-config: FILE is required (or --keys for the table of keys)");
    }
    if (domain.empty() && !mx.empty()) {
        throw std::invalid_argument("check-config: --mx needs --domain");
    }
    const engine::config c = engine::load_config(path);
    if (!domain.empty()) {
        std::fprintf(stdout, "%s: ok\n\n%s", path.c_str(), engine::describe_destination(c, domain, mx).c_str());
        return exit_ok;
    }
    std::fprintf(stdout, "%s: ok\n\n%s", path.c_str(), engine::describe(c).c_str());
    return exit_ok;
}

// `rules`: the built-in rules as TOML (--print-defaults), or every rule in
// force for a configuration, in the order they are tried.
int run_rules(const std::string& config_path, bool defaults) {
    if (defaults) {
        std::fwrite(engine::builtin_rules_toml.data(), 1, engine::builtin_rules_toml.size(), stdout);
        return exit_ok;
    }
    const engine::config c = config_path.empty() ? engine::config{} : engine::load_config(config_path);
    std::fprintf(stdout, "# %zu rules in force, tried in this order (the first match counts)%s\n", c.rules.rules.size(),
                 c.rules.builtin ? "" : "; built-ins off ([rules] builtin = false)");
    for (const engine::rule& r : c.rules.rules) {
        std::fprintf(stdout, "\n%s", engine::describe_rule(r).c_str());
    }
    return exit_ok;
}

namespace {

// A reply as a receiver writes it ("421-4.7.28 …" lines, or one line) on
// one line as the rules see it: "code enhanced text".
mxpress::smtp::reply parse_pasted_reply(const std::string& text) {
    mxpress::smtp::reply rep;
    std::string body;
    std::size_t at = 0;
    while (at <= text.size()) {
        std::size_t end = text.find('\n', at);
        if (end == std::string::npos) {
            end = text.size();
        }
        std::string line = text.substr(at, end - at);
        at = end + 1;
        while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) {
            line.pop_back();
        }
        if (line.empty()) {
            continue;
        }
        if (line.size() < 3 ||
            !std::all_of(line.begin(), line.begin() + 3, [](char ch) { return ch >= '0' && ch <= '9'; }) ||
            (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
            throw std::invalid_argument("explain-reply: each line must start with a 3-digit code: " + line);
        }
        rep.code = std::stoi(line.substr(0, 3));
        std::string rest = line.size() > 4 ? line.substr(4) : std::string();
        const std::size_t sp = rest.find(' ');
        const std::string first = rest.substr(0, sp);
        const bool enhanced = first.size() >= 5 && (first[0] == '2' || first[0] == '4' || first[0] == '5') &&
                              first[1] == '.' && std::count(first.begin(), first.end(), '.') == 2;
        if (enhanced) {
            rep.enhanced = first;
            rest = sp == std::string::npos ? std::string() : rest.substr(sp + 1);
        }
        body += body.empty() ? rest : "\n" + rest;
    }
    if (rep.code < 200 || rep.code > 599) {
        throw std::invalid_argument("explain-reply: not an SMTP reply (a code from 200 to 599 first)");
    }
    rep.text = body;
    return rep;
}

}  // namespace

// `explain-reply`: which rule a reply matches, what it does to which
// destination, and the policy that destination has.
int run_explain_reply(const std::string& reply_text, const std::string& config_path, const std::string& domain,
                      const std::string& mx) {
    if (domain.empty()) {
        throw std::invalid_argument("explain-reply: --domain is required (the recipient domain that got the reply)");
    }
    const engine::config c = config_path.empty() ? engine::config{} : engine::load_config(config_path);
    const mxpress::smtp::reply rep = parse_pasted_reply(reply_text);
    const std::string d = mxpress::detail::to_lower_copy(domain);
    const auto* pc = mx.empty() ? nullptr : c.provider_for(mxpress::detail::to_lower_copy(mx));
    const std::string line = rep.one_line();
    std::string out = fmt::format("reply: {}\n", line);
    const engine::rule* r = c.rules.match(rep.code, line, d, pc != nullptr ? std::string_view(pc->name) : "");
    if (r == nullptr) {
        out += fmt::format("rule: none matches ({} rules in force): {}\n", c.rules.rules.size(),
                           rep.permanent() ? "the recipient bounces" : "the recipient is retried with backoff");
    } else {
        const bool provider_scope = pc != nullptr && r->domain.empty();
        out += fmt::format("rule: {} ({})\nscope: {}\n", r->name, r->origin,
                           provider_scope ? fmt::format("provider \"{}\" (every domain whose MX hosts it matches, all "
                                                        "shards)",
                                                        pc->name)
                                          : fmt::format("domain {}{}", d,
                                                        mx.empty() && !c.providers.empty()
                                                            ? " (or its provider: give --mx HOST to see which)"
                                                            : ""));
        const std::string when =
            r->trigger == "immediate" ? "at the first match" : fmt::format("after {} (matches/span)", r->trigger);
        switch (r->action) {
            case engine::rule_action::scale:
                out += fmt::format(
                    "action: scale the rate by {} {}, never below {}; recover {} while no reply "
                    "matches\n(no rate configured: it scales the rate it was sending at)\n",
                    r->factor, when, r->floor.text, r->recover);
                break;
            case engine::rule_action::suspend:
                out += fmt::format(
                    "action: suspend for {} {}: its mail waits (not bounced, not aged), then restarts "
                    "at {} of the rate and recovers {}\n",
                    r->duration_text, when, r->factor, r->recover);
                break;
            case engine::rule_action::stop:
                out += fmt::format(
                    "action: stop {}: no more mail there this run; its recipients stay unfinished "
                    "for --resume after the fix\n",
                    when);
                break;
        }
    }
    out += "\n" + engine::describe_destination(c, d, mx);
    std::fputs(out.c_str(), stdout);
    return exit_ok;
}

}  // namespace mxpress::cli
