// bench/micro_bench.cpp — Google Benchmark for the hot paths of the
// foundation: CSV parsing, template rendering (2 KB and 32 KB, 5 fields;
// 2 KB DKIM-signed with RSA-2048, Ed25519 or both),
// SMTP reply parsing, dot-stuffing and journal line formatting.
//
//   build/bench/mxpress_micro_bench --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true     (one command line)
#include <benchmark/benchmark.h>

#include <ares.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sodium.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "mxpress/engine/journal.hpp"
#include "mxpress/mail/message_template.hpp"
#include "mxpress/mail/recipients.hpp"
#include "mxpress/net/dns.hpp"
#include "mxpress/net/tls.hpp"
#include "mxpress/smtp/dot_stuff.hpp"
#include "mxpress/smtp/reply.hpp"

namespace {

// A recipients file like a real list: 6 columns, some quoted fields.
std::string make_csv(std::size_t rows) {
    std::mt19937 rng(7);
    std::string out = "email,first_name,last_name,city,plan,note\n";
    for (std::size_t i = 0; i < rows; ++i) {
        out += "user" + std::to_string(i) + "@d" + std::to_string(rng() % 1000) + ".example";
        out += ",Firstname" + std::to_string(i % 97) + ",Lastname,";
        out += (i % 5 == 0) ? "\"Paris, France\"" : "Berlin";
        out += ",premium,";
        out += (i % 7 == 0) ? "\"said \"\"hello\"\" once\"" : "no note here";
        out += '\n';
    }
    return out;
}

void BM_csv_parse(benchmark::State& state) {
    const std::string text = make_csv(200000);
    for (auto _ : state) {
        auto reader = mxpress::mail::csv_reader::from_string(text);
        mxpress::mail::csv_record rec;
        std::size_t n = 0;
        while (reader.next(rec)) {
            n += rec.fields.size();
        }
        benchmark::DoNotOptimize(n);
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * text.size()));
}
BENCHMARK(BM_csv_parse)->Unit(benchmark::kMillisecond);

// A template of about `size` bytes with 5 merge fields.
std::string make_template(std::size_t size) {
    std::string t =
        "From: \"Town Hall\" <news@town.example>\n"
        "To: {{first_name}} {{last_name}} <{{email}}>\n"
        "Subject: Notice for {{first_name}} in {{city}}\n"
        "List-Unsubscribe: <https://town.example/u/{{plan}}>\n"
        "\n"
        "Dear {{first_name}} {{last_name}},\n\n";
    const std::string para =
        "The council meets next week to discuss the budget for the coming year. Residents of {{city}} are "
        "welcome to attend and to speak.\n";
    while (t.size() < size) {
        t += para;
    }
    return t;
}

void render_bench(benchmark::State& state, std::size_t size) {
    const std::vector<std::string> columns = {"email", "first_name", "last_name", "city", "plan"};
    const auto tmpl = mxpress::mail::message_template::compile(make_template(size), "bench.eml", columns);
    mxpress::mail::renderer_options o;
    o.from = "bounce@town.example";
    mxpress::mail::renderer r(tmpl, o);
    const std::vector<std::string_view> fields = {"jane.doe@example.org", "Jane", "Doe", "Springfield", "gold"};
    std::string out;
    // A render that fails is fast and measures nothing: check the first one
    // whole, and every one's status.
    if (!r.render(fields, out).ok() || out.size() < size || out.find("Dear Jane Doe,") == std::string::npos) {
        state.SkipWithError("the template does not render");
        return;
    }
    std::size_t bytes = 0;
    for (auto _ : state) {
        const auto res = r.render(fields, out);
        if (!res.ok()) {
            state.SkipWithError(res.error.c_str());
            break;
        }
        benchmark::DoNotOptimize(out.data());
        bytes += out.size();
    }
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(static_cast<std::int64_t>(bytes));
}
void BM_render_2k(benchmark::State& state) {
    render_bench(state, 2048);
}
void BM_render_32k(benchmark::State& state) {
    render_bench(state, 32768);
}
BENCHMARK(BM_render_2k);
BENCHMARK(BM_render_32k);

// A fresh private key written as PEM (mode 0600) to a temporary file.
std::string write_key(EVP_PKEY* key) {
    char path[] = "/tmp/mxpress-bench-key-XXXXXX";
    const int fd = ::mkstemp(path);
    FILE* f = ::fdopen(fd, "w");
    PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
    std::fclose(f);
    EVP_PKEY_free(key);
    return path;
}

// Render and DKIM-sign a 2 KB message: relaxed/relaxed, the default header
// list, oversigned; `rsa` and `ed25519` pick the keys (both: dual signatures).
// `fixed_start`: the body opens with fixed text (the greeting with its merge
// fields moved to the end), so its hash state is cloned, not recomputed.
void signed_bench(benchmark::State& state, bool rsa, bool ed25519, std::size_t size = 2048, bool fixed_start = false) {
    namespace dkim = mxpress::mail::dkim;
    dkim::settings s;
    std::vector<std::string> files;
    if (rsa) {
        files.push_back(write_key(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", std::size_t{2048})));
        s.keys.push_back({"town.example", "r1", files.back(), 0, 0});
    }
    if (ed25519) {
        files.push_back(write_key(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")));
        s.keys.push_back({"town.example", "e1", files.back(), 0, 0});
    }
    std::vector<std::string> warnings;
    const std::vector<std::string> columns = {"email", "first_name", "last_name", "city", "plan"};
    std::string text = make_template(size);
    if (fixed_start) {
        const std::string greeting = "Dear {{first_name}} {{last_name}},\n\n";
        text.erase(text.find(greeting), greeting.size());
        for (std::size_t at = text.find("\n\n"); (at = text.find("{{city}}", at)) != std::string::npos;) {
            text.replace(at, 8, "Springfield");
        }
        text += "\nRegards to {{first_name}} {{last_name}} in {{city}}.\n";
    }
    const auto tmpl = mxpress::mail::message_template::compile(text, "bench.eml", columns);
    mxpress::mail::renderer_options o;
    o.from = "bounce@town.example";
    o.dkim = dkim::load_keys(s, warnings);
    for (const std::string& f : files) {
        ::unlink(f.c_str());
    }
    mxpress::mail::renderer r(tmpl, o);
    const std::vector<std::string_view> fields = {"jane.doe@example.org", "Jane", "Doe", "Springfield", "gold"};
    std::string out;
    for (auto _ : state) {
        const auto res = r.render(fields, out, 2);
        if (!res.ok()) {
            state.SkipWithError(res.error.c_str());
            break;
        }
        benchmark::DoNotOptimize(out.data());
    }
    state.SetItemsProcessed(state.iterations());
}
void BM_render_dkim_rsa2048_2k(benchmark::State& state) {
    signed_bench(state, true, false);
}
void BM_render_dkim_ed25519_2k(benchmark::State& state) {
    signed_bench(state, false, true);
}
void BM_render_dkim_rsa_and_ed25519_2k(benchmark::State& state) {
    signed_bench(state, true, true);
}
// The ceiling: OpenSSL signing 32 bytes with the same key types, as
// `openssl speed` does, in the same process (ratios survive a noisy box
// when run with --benchmark_enable_random_interleaving).
void raw_sign_bench(benchmark::State& state, EVP_PKEY* key, const EVP_MD* md) {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    const unsigned char msg[32] = {1, 2, 3};
    unsigned char sig[512];
    for (auto _ : state) {
        std::size_t len = sizeof sig;
        EVP_DigestSignInit(ctx, nullptr, md, nullptr, key);
        EVP_DigestSign(ctx, sig, &len, msg, sizeof msg);
        benchmark::DoNotOptimize(sig[0]);
    }
    state.SetItemsProcessed(state.iterations());
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(key);
}
void BM_openssl_sign_rsa2048(benchmark::State& state) {
    raw_sign_bench(state, EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", std::size_t{2048}), EVP_sha256());
}
void BM_openssl_sign_ed25519(benchmark::State& state) {
    raw_sign_bench(state, EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"), nullptr);
}
// What mxpress's Ed25519 signatures cost: libsodium's, over the same 32 bytes.
void BM_libsodium_sign_ed25519(benchmark::State& state) {
    if (sodium_init() < 0) {
        state.SkipWithError("sodium_init failed");
        return;
    }
    unsigned char pk[crypto_sign_PUBLICKEYBYTES];
    unsigned char sk[crypto_sign_SECRETKEYBYTES];
    crypto_sign_keypair(pk, sk);
    const unsigned char msg[32] = {1, 2, 3};
    unsigned char sig[crypto_sign_BYTES];
    for (auto _ : state) {
        crypto_sign_detached(sig, nullptr, msg, sizeof msg, sk);
        benchmark::DoNotOptimize(sig[0]);
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_openssl_sign_rsa2048)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_openssl_sign_ed25519)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_libsodium_sign_ed25519)->Unit(benchmark::kMicrosecond);
void BM_render_dkim_ed25519_32k(benchmark::State& state) {
    signed_bench(state, false, true, 32768);
}
void BM_render_dkim_ed25519_32k_fixed_start(benchmark::State& state) {
    signed_bench(state, false, true, 32768, true);
}
BENCHMARK(BM_render_dkim_rsa2048_2k)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_render_dkim_ed25519_32k)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_render_dkim_ed25519_32k_fixed_start)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_render_dkim_ed25519_2k)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_render_dkim_rsa_and_ed25519_2k)->Unit(benchmark::kMicrosecond);

void BM_smtp_reply_parse(benchmark::State& state) {
    // A typical pipelined answer: MAIL, 3 RCPT, DATA, final.
    const std::string replies =
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <x@y>: Recipient address rejected\r\n"
        "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as 4F2C81A0B3\r\n";
    mxpress::smtp::reply_parser p;
    std::int64_t count = 0;
    for (auto _ : state) {
        std::string_view rest = replies;
        while (!rest.empty()) {
            std::size_t used = 0;
            if (p.feed(rest, used) == mxpress::smtp::reply_parser::status::reply_ready) {
                benchmark::DoNotOptimize(p.take());
                ++count;
            }
            rest.remove_prefix(used);
        }
    }
    state.SetItemsProcessed(count);
}
BENCHMARK(BM_smtp_reply_parse);

void BM_dot_stuff(benchmark::State& state) {
    std::string msg;
    while (msg.size() < 32768) {
        msg += "A line of body text that is about as long as lines in mail usually are.\r\n";
        if (msg.size() % 7 == 0) {
            msg += ".a line starting with a dot\r\n";
        }
    }
    std::string out;
    for (auto _ : state) {
        out.clear();
        mxpress::smtp::append_dot_stuffed(out, msg);
        benchmark::DoNotOptimize(out.data());
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * msg.size()));
}
BENCHMARK(BM_dot_stuff);

// A typical journal line: a delivery with the server's reply.
mxpress::engine::journal_entry delivered_entry() {
    mxpress::engine::journal_entry e;
    e.line = 123456;
    e.email = "jane.doe@example.org";
    e.status = mxpress::engine::outcome_status::delivered;
    e.code = 250;
    e.enhanced = "2.0.0";
    e.reply = "Ok: queued as 4F2C81A0B3";
    e.mx = "mx1.example.org";
    e.attempts = 1;
    return e;
}

void BM_journal_line(benchmark::State& state) {
    const mxpress::engine::journal_entry e = delivered_entry();
    std::string out;
    for (auto _ : state) {
        out.clear();
        mxpress::engine::append_journal_line(out, e);
        benchmark::DoNotOptimize(out.data());
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_journal_line);

// Appending to a real journal file: formatting, batching and write(2).
void BM_journal_append(benchmark::State& state) {
    char path[] = "/tmp/mxpress-bench-journal-XXXXXX";
    const int fd = ::mkstemp(path);
    ::close(fd);
    auto w = mxpress::engine::journal_writer::open(path, false);
    const mxpress::engine::journal_entry e = delivered_entry();
    for (auto _ : state) {
        w.append(e);
    }
    w.flush();
    ::unlink(path);
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_journal_append);

// A DNS answer as a resolver sends it: `answers` MX records for example.org.
std::vector<unsigned char> make_mx_answer(int answers) {
    std::vector<unsigned char> p = {0x12, 0x34, 0x81, 0x80, 0, 1, 0, static_cast<unsigned char>(answers), 0, 0, 0, 0};
    auto name = [&](std::initializer_list<const char*> labels) {
        for (const char* l : labels) {
            p.push_back(static_cast<unsigned char>(std::strlen(l)));
            p.insert(p.end(), l, l + std::strlen(l));
        }
        p.push_back(0);
    };
    name({"example", "org"});
    p.insert(p.end(), {0, 15, 0, 1});  // QTYPE MX, QCLASS IN
    for (int i = 0; i < answers; ++i) {
        p.insert(p.end(), {0xC0, 0x0C, 0, 15, 0, 1, 0, 0, 0x0E, 0x10});  // name ptr, MX, IN, TTL 3600
        const std::string host = "mx" + std::to_string(i);
        const int rdlen = 2 + 1 + static_cast<int>(host.size()) + 2;  // pref + label + ptr to example.org
        p.push_back(0);
        p.push_back(static_cast<unsigned char>(rdlen));
        p.push_back(0);
        p.push_back(static_cast<unsigned char>(10 * (i + 1)));
        p.push_back(static_cast<unsigned char>(host.size()));
        p.insert(p.end(), host.begin(), host.end());
        p.insert(p.end(), {0xC0, 0x0C});
    }
    return p;
}

// What mxpress does with an MX answer: c-ares parses the bytes, then
// interpret_mx_answer normalizes the host names and puts them in RFC 5321
// order (preference, random among equals).
void BM_dns_mx_interpret(benchmark::State& state) {
    const auto answer = make_mx_answer(4);
    const std::string domain = "example.org";
    std::mt19937 rng(1);
    for (auto _ : state) {
        bool implicit = false;
        const auto mx =
            mxpress::net::interpret_mx_answer(domain, answer.data(), static_cast<int>(answer.size()), rng, implicit);
        if (mx.status != mxpress::net::dns_status::ok || mx.targets.size() != 4 ||
            mx.targets[0].host != "mx0.example.org" || mx.targets[3].preference != 40) {
            state.SkipWithError("unexpected MX answer");
            break;
        }
        benchmark::DoNotOptimize(mx.targets.data());
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_dns_mx_interpret);

}  // namespace

// TLS record cost: one 2 KB message through an established TLS 1.3 pair
// in memory (encrypt, hand over, decrypt) and a small reply back: what
// STARTTLS adds per message on each side, without sockets.
void BM_tls_record_2k(benchmark::State& state) {
    char dir[] = "/tmp/mxpress-bench-XXXXXX";
    if (::mkdtemp(dir) == nullptr) {
        state.SkipWithError("mkdtemp");
        return;
    }
    const std::string d = dir;
    if (std::system((std::string(MXPRESS_SOURCE_DIR) + "/scripts/make-test-certs " + d).c_str()) != 0) {
        state.SkipWithError("make-test-certs failed");
        return;
    }
    using mxpress::net::tls_stream;
    auto sctx = mxpress::net::tls_context::server(d + "/mx.crt", d + "/mx.key");
    auto cctx = mxpress::net::tls_context::client();
    tls_stream server(sctx.get(), tls_stream::role::server);
    tls_stream client(cctx.get(), tls_stream::role::client);
    std::string wire;
    std::string plain;
    client.handshake();
    for (int i = 0; i < 8 && !(client.established() && server.established()); ++i) {
        client.take_output(wire);
        server.feed(wire);
        server.handshake();
        server.take_output(wire);
        client.feed(wire);
        client.handshake();
    }
    client.take_output(wire);
    server.feed(wire);
    server.handshake();
    if (!client.established() || !server.established()) {
        state.SkipWithError("TLS handshake did not complete");
        return;
    }
    const std::string message(2048, 'x');
    const std::string reply = "250 2.0.0 Ok: queued\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data\r\n";
    // Each side must get exactly what the other wrote, or nothing was timed.
    for (auto _ : state) {
        client.write(message);
        client.take_output(wire);
        server.feed(wire);
        plain.clear();
        server.read(plain);
        if (plain.size() != message.size()) {
            state.SkipWithError("the server did not get the message");
            break;
        }
        server.write(reply);
        server.take_output(wire);
        client.feed(wire);
        plain.clear();
        client.read(plain);
        if (plain != reply) {
            state.SkipWithError("the client did not get the replies");
            break;
        }
        benchmark::DoNotOptimize(plain.data());
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(message.size() + reply.size()));
    [[maybe_unused]] const int rc = std::system(("rm -rf " + d).c_str());
}
BENCHMARK(BM_tls_record_2k);

BENCHMARK_MAIN();
