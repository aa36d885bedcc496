// mxpress/mail/dkim.hpp — DKIM signatures (RFC 6376) with RSA-SHA256 and
// Ed25519-SHA256 (RFC 8463) for rendered messages.
//
// Promises:
// - load_keys() reads every private key once, up front: an unreadable file,
//   a key that is neither RSA nor Ed25519, or an RSA key under 1024 bits is
//   an input_error naming the file; a key file that group or others can
//   access, or an RSA key under 2048 bits, adds a warning naming it.
// - A signer signs one message with every key whose d= is aligned with the
//   From domain (equal, or a parent of it) and whose not_after has not
//   passed: the body is canonicalized and hashed once for all signatures, the
//   signed header fields once, and each signature only adds its own
//   DKIM-Signature header to a copy of that hash state.
// - Header fields are picked bottom-up per RFC 6376 §5.4.2; with oversign
//   each listed name appears once more than the message holds it, so a
//   header added in transit breaks the signature. From is always signed.
// - The DKIM-Signature header is folded (lines under 80 octets) and carries
//   t= always and x= when an expiration is set; what is hashed is exactly
//   what goes out, b= value removed, without its trailing CRLF.
// - A signer owns its OpenSSL objects (one per shard); keys are parsed from
//   the PEM text held by the shared key_set, so shards share nothing mutable.
// - Ed25519 signs with libsodium (16 us a signature here, against 28 us for
//   OpenSSL 3.0's; both follow RFC 8032, which makes the signature a
//   function of key and message, so the bytes are the same). OpenSSL still
//   reads the PEM file and checks the key; libsodium gets its 32-byte seed.
#pragma once

#include <algorithm>
#include <array>
#include <cassert>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <sys/stat.h>

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <sodium.h>

#include "mxpress/detail/ascii.hpp"
#include "mxpress/mail/input_error.hpp"
#include "mxpress/mail/mime.hpp"

namespace mxpress::mail::dkim {

enum class canonicalization : std::uint8_t { simple, relaxed };
enum class algorithm : std::uint8_t { rsa_sha256, ed25519_sha256 };

inline const char* to_string(canonicalization c) noexcept {
    return c == canonicalization::simple ? "simple" : "relaxed";
}
inline const char* to_string(algorithm a) noexcept {
    return a == algorithm::rsa_sha256 ? "rsa-sha256" : "ed25519-sha256";
}

constexpr unsigned rsa_bits_min = 1024;      // RFC 8301 §3.2: verifiers may reject less
constexpr unsigned rsa_bits_advised = 2048;  // below this a warning
constexpr std::size_t key_file_bytes_max = 64 * 1024;
constexpr std::size_t signature_line_octets = 76;  // folding width of DKIM-Signature lines
constexpr unsigned sha256_bytes = 32;

// The header fields signed by default: those a receiver shows or acts on.
inline std::vector<std::string> default_signed_headers() {
    return {"From",        "To",         "Cc",           "Reply-To",         "Subject",
            "Date",        "Message-ID", "MIME-Version", "Content-Type",     "Content-Transfer-Encoding",
            "In-Reply-To", "References", "List-Id",      "List-Unsubscribe", "List-Unsubscribe-Post",
            "Feedback-ID"};
}

// One [[dkim.key]] entry as configured.
struct key_spec {
    std::string domain;         // d=, lowercase A-labels
    std::string selector;       // s=
    std::string key_file;       // PEM private key
    std::time_t not_after = 0;  // 0: no end; else the key signs until this instant
    std::uint64_t config_line = 0;
};

// The [dkim] table as configured.
struct settings {
    canonicalization header_canon = canonicalization::relaxed;
    canonicalization body_canon = canonicalization::relaxed;
    std::vector<std::string> headers = default_signed_headers();
    bool oversign = true;
    std::uint64_t expiration_s = 0;  // 0: no x= tag
    std::vector<key_spec> keys;
    std::string config_file;  // where the settings came from, for errors
    bool enabled() const noexcept { return !keys.empty(); }
};

// "relaxed/simple" -> header relaxed, body simple; "relaxed" alone means
// relaxed/simple (RFC 6376 §3.5 c=). Returns false when malformed.
inline bool parse_canonicalization(std::string_view s, canonicalization& header, canonicalization& body) {
    auto one = [](std::string_view w, canonicalization& out) {
        if (w == "simple") {
            out = canonicalization::simple;
            return true;
        }
        if (w == "relaxed") {
            out = canonicalization::relaxed;
            return true;
        }
        return false;
    };
    const std::size_t slash = s.find('/');
    if (slash == std::string_view::npos) {
        body = canonicalization::simple;
        return one(s, header);
    }
    return one(s.substr(0, slash), header) && one(s.substr(slash + 1), body);
}

// ---- OpenSSL handles ------------------------------------------------------

using pkey_ptr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;
using pkey_ctx_ptr = std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)>;
using md_ctx_ptr = std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)>;
using bio_ptr = std::unique_ptr<BIO, decltype(&BIO_free)>;

// OpenSSL's error queue as text (and emptied), for error messages.
inline std::string openssl_errors() {
    std::string out;
    while (const unsigned long e = ERR_get_error()) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        out += out.empty() ? "" : "; ";
        out += buf;
    }
    return out.empty() ? std::string("unknown OpenSSL error") : out;
}

inline pkey_ptr parse_private_key(std::string_view pem) {
    bio_ptr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
    if (!bio) {
        return pkey_ptr(nullptr, &EVP_PKEY_free);
    }
    return pkey_ptr(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr), &EVP_PKEY_free);
}

// A private key checked and ready to sign with.
struct loaded_key {
    std::string domain;
    std::string selector;
    std::string file;
    algorithm alg = algorithm::rsa_sha256;
    unsigned bits = 0;
    std::time_t not_after = 0;
    std::string pem;         // the key, parsed again by each signer
    std::string public_b64;  // p= of the TXT record to publish
};

// The TXT record value ("v=DKIM1; k=…; p=…") that publishes `key`'s public half.
inline std::string txt_record(const loaded_key& key) {
    return fmt::format("v=DKIM1; k={}; p={}", key.alg == algorithm::rsa_sha256 ? "rsa" : "ed25519", key.public_b64);
}

// Reads and checks one PEM private key. Throws input_error naming the file;
// appends warnings (readable by others, short RSA key).
inline loaded_key load_key(const std::string& path, std::vector<std::string>& warnings) {
    loaded_key k;
    k.file = path;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        throw input_error(path, 0, fmt::format("cannot read DKIM key: {}", std::strerror(errno)));
    }
    if (!S_ISREG(st.st_mode)) {
        throw input_error(path, 0, "DKIM key is not a regular file");
    }
    if (static_cast<std::uint64_t>(st.st_size) > key_file_bytes_max) {
        throw input_error(path, 0, "DKIM key file is too large to be a PEM private key");
    }
    if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
        warnings.push_back(fmt::format(
            "WARNING: DKIM key file {} is accessible by others (mode {:04o}); a private key should be readable by its "
            "owner only: chmod 600 {}",
            path, st.st_mode & 07777, path));
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw input_error(path, 0, fmt::format("cannot read DKIM key: {}", std::strerror(errno)));
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    k.pem = ss.str();
    ERR_clear_error();
    pkey_ptr key = parse_private_key(k.pem);
    if (!key) {
        ERR_clear_error();
        throw input_error(path, 0, "not a PEM private key (expected an RSA or Ed25519 private key, unencrypted)");
    }
    const int id = EVP_PKEY_get_base_id(key.get());
    if (id == EVP_PKEY_RSA) {
        k.alg = algorithm::rsa_sha256;
        k.bits = static_cast<unsigned>(EVP_PKEY_get_bits(key.get()));
        if (k.bits < rsa_bits_min) {
            throw input_error(path, 0,
                              fmt::format("RSA key of {} bits is too short for DKIM (at least {}; {} advised)", k.bits,
                                          rsa_bits_min, rsa_bits_advised));
        }
        if (k.bits < rsa_bits_advised) {
            warnings.push_back(
                fmt::format("WARNING: DKIM key {} has {} bits; {} are advised", path, k.bits, rsa_bits_advised));
        }
        // p= is the SubjectPublicKeyInfo (RFC 6376 §3.6.1, as every signer publishes it).
        unsigned char* der = nullptr;
        const int n = i2d_PUBKEY(key.get(), &der);
        if (n <= 0) {
            throw input_error(path, 0, "cannot encode the public key: " + openssl_errors());
        }
        append_base64(k.public_b64, std::string_view(reinterpret_cast<const char*>(der), static_cast<std::size_t>(n)));
        OPENSSL_free(der);
    } else if (id == EVP_PKEY_ED25519) {
        k.alg = algorithm::ed25519_sha256;
        k.bits = 256;
        // p= is the raw 32-octet public key (RFC 8463 §4.2).
        unsigned char raw[32];
        std::size_t len = sizeof raw;
        if (EVP_PKEY_get_raw_public_key(key.get(), raw, &len) != 1 || len != sizeof raw) {
            throw input_error(path, 0, "cannot encode the Ed25519 public key: " + openssl_errors());
        }
        append_base64(k.public_b64, std::string_view(reinterpret_cast<const char*>(raw), len));
    } else {
        throw input_error(path, 0,
                          fmt::format("key type {} cannot sign DKIM: use RSA (2048 bits) or Ed25519",
                                      OBJ_nid2sn(id) != nullptr ? OBJ_nid2sn(id) : "unknown"));
    }
    return k;
}

// Everything a signer needs, loaded once per run and shared (read-only).
struct key_set {
    canonicalization header_canon = canonicalization::relaxed;
    canonicalization body_canon = canonicalization::relaxed;
    std::vector<std::string> headers;  // lowercase names, in signing order
    bool oversign = true;
    std::uint64_t expiration_s = 0;
    std::vector<loaded_key> keys;
};

// Loads every key of `s`. Throws input_error; warnings are appended.
inline std::shared_ptr<const key_set> load_keys(const settings& s, std::vector<std::string>& warnings) {
    auto ks = std::make_shared<key_set>();
    ks->header_canon = s.header_canon;
    ks->body_canon = s.body_canon;
    ks->oversign = s.oversign;
    ks->expiration_s = s.expiration_s;
    bool from_listed = false;
    for (const std::string& h : s.headers) {
        std::string lower = detail::to_lower_copy(h);
        from_listed = from_listed || lower == "from";
        if (std::find(ks->headers.begin(), ks->headers.end(), lower) == ks->headers.end()) {
            ks->headers.push_back(std::move(lower));
        }
    }
    if (!from_listed) {
        ks->headers.insert(ks->headers.begin(), "from");  // RFC 6376 §5.4: From MUST be signed
    }
    for (const key_spec& spec : s.keys) {
        loaded_key k = load_key(spec.key_file, warnings);
        k.domain = spec.domain;
        k.selector = spec.selector;
        k.not_after = spec.not_after;
        ks->keys.push_back(std::move(k));
    }
    return ks;
}

// ---- canonicalization (RFC 6376 §3.4) -------------------------------------

// Relaxed header: lowercase name, unfolded value with runs of WSP as one SP
// and no WSP at either end: "name:value\r\n".
inline void canonicalize_header_relaxed(std::string& out, std::string_view name, std::string_view value) {
    for (char c : detail::trim_wsp(name)) {
        out += detail::to_lower(c);
    }
    out += ':';
    bool pending_space = false;
    bool started = false;
    for (char c : value) {
        if (c == '\r' || c == '\n') {
            continue;
        }
        if (c == ' ' || c == '\t') {
            pending_space = started;
            continue;
        }
        if (pending_space) {
            out += ' ';
            pending_space = false;
        }
        out += c;
        started = true;
    }
    out += "\r\n";
}

// Appends the canonical body to `out`. `body` is CRLF text (may be empty).
// `tail`: `body` continues a body whose part before it (line-aligned, its
// last line not empty) was canonicalized apart, so an empty tail adds nothing.
inline void canonicalize_body(std::string& out, std::string_view body, canonicalization c, bool tail = false) {
    if (c == canonicalization::simple) {
        // Trailing empty lines removed; an empty body becomes one CRLF.
        std::size_t n = body.size();
        while (n >= 4 && body.substr(n - 4, 4) == "\r\n\r\n") {
            n -= 2;
        }
        if (n == 0 || (n == 2 && body.substr(0, 2) == "\r\n")) {
            if (!tail) {
                out += "\r\n";
            }
            return;
        }
        out.append(body.data(), n);
        if (!body.substr(0, n).ends_with("\r\n")) {
            out += "\r\n";
        }
        return;
    }
    // Relaxed: WSP runs -> one SP, no WSP at line ends, trailing empty lines
    // removed; an empty body stays empty.
    const std::size_t start = out.size();
    std::size_t last_nonempty_end = start;  // out size after the last non-empty line
    std::size_t i = 0;
    while (i < body.size()) {
        std::size_t eol = body.find("\r\n", i);
        const bool has_crlf = eol != std::string_view::npos;
        if (!has_crlf) {
            eol = body.size();
        }
        const std::size_t line_start = out.size();
        const std::string_view line = body.substr(i, eol - i);
        if (line.find('\t') == std::string_view::npos && line.find("  ") == std::string_view::npos &&
            !line.ends_with(' ')) {
            // The common line: nothing to change, copied at once.
            out += line;
            out += "\r\n";
            if (!line.empty()) {
                last_nonempty_end = out.size();
            }
            i = has_crlf ? eol + 2 : body.size();
            continue;
        }
        bool pending_space = false;
        for (std::size_t k = i; k < eol; ++k) {
            const char ch = body[k];
            if (ch == ' ' || ch == '\t') {
                pending_space = true;
                continue;
            }
            if (pending_space) {
                out += ' ';
                pending_space = false;
            }
            out += ch;
        }
        const bool nonempty = out.size() > line_start;
        out += "\r\n";
        if (nonempty) {
            last_nonempty_end = out.size();
        }
        i = has_crlf ? eol + 2 : body.size();
    }
    out.resize(last_nonempty_end);
}

// One header field of a message: name and the raw text after the colon,
// continuation lines included, without the final CRLF.
struct header_field {
    std::string_view name;
    std::string_view value;
    std::string_view whole;  // "Name: value\r\n" as on the wire
};

// Splits a header block (every line ending in CRLF) into fields.
inline void split_header_fields(std::string_view block, std::vector<header_field>& out) {
    out.clear();
    std::size_t i = 0;
    while (i < block.size()) {
        std::size_t end = i;
        // A field runs until a CRLF not followed by WSP.
        for (;;) {
            const std::size_t crlf = block.find("\r\n", end);
            if (crlf == std::string_view::npos) {
                end = block.size();
                break;
            }
            end = crlf + 2;
            if (end >= block.size() || !detail::is_wsp(block[end])) {
                break;
            }
        }
        const std::string_view whole = block.substr(i, end - i);
        const std::size_t colon = whole.find(':');
        if (colon != std::string_view::npos) {
            std::string_view value = whole.substr(colon + 1);
            if (value.ends_with("\r\n")) {
                value.remove_suffix(2);
            }
            out.push_back(header_field{whole.substr(0, colon), value, whole});
        }
        i = end;
    }
}

// The domain of the (first) address in a From value, lowercase; empty if none.
inline std::string from_domain(std::string_view value) {
    std::string_view addr = value;
    const std::size_t lt = value.find('<');
    if (lt != std::string_view::npos) {
        const std::size_t gt = value.find('>', lt);
        addr = value.substr(lt + 1, gt == std::string_view::npos ? std::string_view::npos : gt - lt - 1);
    }
    const std::size_t at = addr.rfind('@');
    if (at == std::string_view::npos) {
        return {};
    }
    std::string d;
    for (char c : addr.substr(at + 1)) {
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ',' || c == '>' || c == ')') {
            break;
        }
        d += detail::to_lower(c);
    }
    return d;
}

// Relaxed alignment (RFC 7489 §3.1.1, without the public suffix list): d= is
// the From domain or one of its parents.
inline bool aligned(std::string_view d, std::string_view from) {
    if (detail::iequals(d, from)) {
        return true;
    }
    return from.size() > d.size() + 1 && from[from.size() - d.size() - 1] == '.' &&
           detail::iequals(from.substr(from.size() - d.size()), d);
}

// The longest start of `literal` (body text before its first merge field,
// CRLF lines) whose canonical form does not depend on what follows: whole
// lines, ending with a line that holds more than whitespace. Empty if none.
inline std::string_view hashable_prefix(std::string_view literal) {
    std::size_t end = literal.rfind("\r\n");  // end of the candidate last line
    while (end != std::string_view::npos) {
        const std::size_t before = end == 0 ? std::string_view::npos : literal.rfind("\r\n", end - 1);
        const std::size_t line_begin = before == std::string_view::npos ? 0 : before + 2;
        const std::string_view line = literal.substr(line_begin, end - line_begin);
        if (line.find_first_not_of(" \t") != std::string_view::npos) {
            return literal.substr(0, end + 2);
        }
        end = before;
    }
    return {};
}

// ---- signing -----------------------------------------------------------------

// Signs messages with a key_set. Not thread-safe: one per thread.
class signer {
public:
    explicit signer(std::shared_ptr<const key_set> keys)
        : _keys(std::move(keys)),
          _hash(EVP_MD_CTX_new(), &EVP_MD_CTX_free),
          _copy(EVP_MD_CTX_new(), &EVP_MD_CTX_free),
          _body_hash(EVP_MD_CTX_new(), &EVP_MD_CTX_free),
          _prefix_hash(EVP_MD_CTX_new(), &EVP_MD_CTX_free),
          _sha256(EVP_MD_fetch(nullptr, "SHA256", nullptr), &EVP_MD_free) {
        if (!_hash || !_copy || !_body_hash || !_prefix_hash) {
            throw std::bad_alloc();
        }
        if (!_sha256) {
            throw std::runtime_error("cannot fetch SHA-256 from OpenSSL: " + openssl_errors());
        }
        _signing.reserve(_keys->keys.size());  // never moved: no stray copies of a secret
        for (const loaded_key& k : _keys->keys) {
            pkey_ptr pkey = parse_private_key(k.pem);
            if (!pkey) {
                throw std::runtime_error(fmt::format("{}: cannot parse DKIM key: {}", k.file, openssl_errors()));
            }
            pkey_ctx_ptr ctx(nullptr, &EVP_PKEY_CTX_free);
            ed25519_secret ed{};
            if (k.alg == algorithm::ed25519_sha256) {
                // libsodium's secret key (seed and public key) from the seed
                // OpenSSL read; wiped when the signer goes.
                unsigned char seed[crypto_sign_SEEDBYTES];
                std::size_t seed_len = sizeof seed;
                unsigned char pk[crypto_sign_PUBLICKEYBYTES];
                const bool ok = sodium_ready() && EVP_PKEY_get_raw_private_key(pkey.get(), seed, &seed_len) == 1 &&
                                seed_len == sizeof seed && crypto_sign_seed_keypair(pk, ed.data(), seed) == 0;
                sodium_memzero(seed, sizeof seed);
                if (!ok) {
                    throw std::runtime_error(
                        fmt::format("{}: cannot set up Ed25519 signing: {}", k.file, openssl_errors()));
                }
            }
            if (k.alg == algorithm::rsa_sha256) {
                // One context per key, initialized once: RSASSA-PKCS1-v1_5 over a SHA-256 digest.
                ctx.reset(EVP_PKEY_CTX_new(pkey.get(), nullptr));
                if (!ctx || EVP_PKEY_sign_init(ctx.get()) != 1 ||
                    EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING) != 1 ||
                    EVP_PKEY_CTX_set_signature_md(ctx.get(), EVP_sha256()) != 1) {
                    throw std::runtime_error(
                        fmt::format("{}: cannot set up RSA signing: {}", k.file, openssl_errors()));
                }
            }
            _signing.push_back(signing_key{&k, std::move(pkey), std::move(ctx), ed});
            sodium_memzero(ed.data(), ed.size());
        }
    }
    ~signer() {
        for (signing_key& k : _signing) {
            sodium_memzero(k.ed.data(), k.ed.size());
        }
    }
    signer(const signer&) = delete;
    signer& operator=(const signer&) = delete;

    const key_set& keys() const noexcept { return *_keys; }
    // Bodies whose hash started from the cached prefix state (for tests).
    std::uint64_t prefix_hits() const noexcept { return _prefix_hits; }

    // Computes the DKIM-Signature header(s) for `message` (headers, empty
    // line, body; CRLF line ends) and appends them to `out`. `now` goes in t=.
    // `body_prefix`: text every body of the batch starts with (see
    // hashable_prefix); its hash state is kept and cloned, so only the rest of
    // each body is canonicalized and hashed. A body that does not start with
    // it is hashed whole. Returns an empty string, or why the message cannot
    // be signed.
    std::string sign(std::string_view message, std::time_t now, std::string& out, std::string_view body_prefix = {}) {
        std::size_t body_at = 0;
        std::string_view head;
        if (message.starts_with("\r\n")) {
            body_at = 2;
        } else {
            const std::size_t blank = message.find("\r\n\r\n");
            if (blank == std::string_view::npos) {
                return "message has no empty line between header and body";
            }
            head = message.substr(0, blank + 2);
            body_at = blank + 4;
        }
        split_header_fields(head, _fields);
        std::string domain;
        for (const header_field& f : _fields) {
            if (detail::iequals(detail::trim_wsp(f.name), "from")) {
                domain = from_domain(f.value);
                break;
            }
        }
        if (domain.empty()) {
            return "DKIM: the message has no From address to align a signature with";
        }
        _chosen.clear();
        for (const signing_key& k : _signing) {
            if (aligned(k.spec->domain, domain) && (k.spec->not_after == 0 || now <= k.spec->not_after)) {
                _chosen.push_back(&k);
            }
        }
        if (_chosen.empty()) {
            std::string list;
            for (const signing_key& k : _signing) {
                list += list.empty() ? "" : ", ";
                list += fmt::format("{}._domainkey.{}", k.spec->selector, k.spec->domain);
                if (k.spec->not_after != 0 && now > k.spec->not_after) {
                    list += " (past not_after)";
                }
            }
            return fmt::format("DKIM: no key aligned with the From domain {} (keys: {})", domain, list);
        }

        // Body hash: once for all signatures.
        const key_set& ks = *_keys;
        const std::string_view body = message.substr(body_at);
        std::size_t hashed_raw = 0;  // body octets covered by the cached prefix state
        if (!body_prefix.empty() && body.starts_with(body_prefix)) {
            if (!_prefix_ready || _prefix_text != body_prefix) {
                _prefix_text.assign(body_prefix);
                _canon.clear();
                canonicalize_body(_canon, _prefix_text, ks.body_canon);
                _prefix_ready = EVP_DigestInit_ex(_prefix_hash.get(), _sha256.get(), nullptr) == 1 &&
                                EVP_DigestUpdate(_prefix_hash.get(), _canon.data(), _canon.size()) == 1;
            }
            if (_prefix_ready && EVP_MD_CTX_copy_ex(_body_hash.get(), _prefix_hash.get()) == 1) {
                hashed_raw = body_prefix.size();
                ++_prefix_hits;
            }
        }
        if (hashed_raw == 0 && EVP_DigestInit_ex(_body_hash.get(), _sha256.get(), nullptr) != 1) {
            return "DKIM: SHA-256 failed: " + openssl_errors();
        }
        _canon.clear();
        canonicalize_body(_canon, body.substr(hashed_raw), ks.body_canon, hashed_raw != 0);
        unsigned char digest[EVP_MAX_MD_SIZE];
        unsigned digest_len = 0;
        if (EVP_DigestUpdate(_body_hash.get(), _canon.data(), _canon.size()) != 1 ||
            EVP_DigestFinal_ex(_body_hash.get(), digest, &digest_len) != 1) {
            return "DKIM: SHA-256 failed: " + openssl_errors();
        }
        assert(digest_len == sha256_bytes);
        _bh.clear();
        append_base64(_bh, std::string_view(reinterpret_cast<const char*>(digest), digest_len));

        // Signed header fields, bottom-up per name; h= as it will read.
        _canon.clear();
        _h_names.clear();
        for (const std::string& name : ks.headers) {
            std::size_t present = 0;
            for (std::size_t i = _fields.size(); i-- > 0;) {
                if (!detail::iequals(detail::trim_wsp(_fields[i].name), name)) {
                    continue;
                }
                ++present;
                append_canonical_header(_canon, _fields[i]);
                _h_names.push_back(name);
            }
            const std::size_t listed = present + (ks.oversign ? 1 : 0);
            for (std::size_t n = present; n < listed; ++n) {
                _h_names.push_back(name);  // names no instance: an empty string is hashed
            }
        }
        if (EVP_DigestInit_ex(_hash.get(), _sha256.get(), nullptr) != 1 ||
            EVP_DigestUpdate(_hash.get(), _canon.data(), _canon.size()) != 1) {
            return "DKIM: SHA-256 failed: " + openssl_errors();
        }

        assert(!_chosen.empty());
        for (const signing_key* k : _chosen) {
            const std::size_t header_begin = out.size();
            append_signature_header(out, *k->spec, now);
            // The signature header itself, b= empty, without its CRLF.
            _canon.clear();
            const std::string_view sig_header = std::string_view(out).substr(header_begin);
            assert(sig_header.starts_with("DKIM-Signature:") && sig_header.ends_with("b="));
            if (ks.header_canon == canonicalization::relaxed) {
                const std::size_t colon = sig_header.find(':');
                canonicalize_header_relaxed(_canon, sig_header.substr(0, colon), sig_header.substr(colon + 1));
                _canon.resize(_canon.size() - 2);
            } else {
                _canon.assign(sig_header);
            }
            if (EVP_MD_CTX_copy_ex(_copy.get(), _hash.get()) != 1 ||
                EVP_DigestUpdate(_copy.get(), _canon.data(), _canon.size()) != 1 ||
                EVP_DigestFinal_ex(_copy.get(), digest, &digest_len) != 1) {
                return "DKIM: SHA-256 failed: " + openssl_errors();
            }
            unsigned char sig[1024];
            std::size_t sig_len = sizeof sig;
            if (k->spec->alg == algorithm::rsa_sha256) {
                if (EVP_PKEY_sign(k->ctx.get(), sig, &sig_len, digest, digest_len) != 1) {
                    return fmt::format("DKIM: RSA signing with {} failed: {}", k->spec->file, openssl_errors());
                }
            } else {
                // RFC 8463 §3: PureEdDSA over the SHA-256 hash of the header data.
                unsigned long long len = 0;
                if (crypto_sign_detached(sig, &len, digest, digest_len, k->ed.data()) != 0) {
                    return fmt::format("DKIM: Ed25519 signing with {} failed", k->spec->file);
                }
                sig_len = static_cast<std::size_t>(len);
            }
            assert(digest_len == sha256_bytes && sig_len > 0 && sig_len <= sizeof sig);
            _b.clear();
            append_base64(_b, std::string_view(reinterpret_cast<const char*>(sig), sig_len));
            append_folded_b(out, _b);
            out += "\r\n";
        }
        return {};
    }

private:
    using ed25519_secret = std::array<unsigned char, crypto_sign_SECRETKEYBYTES>;

    struct signing_key {
        const loaded_key* spec;
        pkey_ptr pkey;
        pkey_ctx_ptr ctx;   // RSA only: sign context, initialized once
        ed25519_secret ed;  // Ed25519 only: libsodium's secret key (seed, public key)
    };

    // sodium_init() once per process (thread-safe, idempotent).
    static bool sodium_ready() {
        static const bool ready = sodium_init() >= 0;
        return ready;
    }

    void append_canonical_header(std::string& out, const header_field& f) const {
        if (_keys->header_canon == canonicalization::relaxed) {
            canonicalize_header_relaxed(out, f.name, f.value);
        } else {
            out += f.whole;
        }
    }

    // "DKIM-Signature: v=1; a=…; … b=" folded, without b's value or CRLF.
    void append_signature_header(std::string& out, const loaded_key& k, std::time_t now) {
        const std::size_t begin = out.size();
        std::size_t line_start = begin;
        auto tag = [&](std::string_view text) {
            // Fold before a tag that would pass the line width.
            if (out.size() - line_start + 1 + text.size() > signature_line_octets) {
                out += "\r\n\t";
                line_start = out.size() - 1;
            } else {
                out += ' ';
            }
            out += text;
        };
        out += "DKIM-Signature:";
        tag("v=1;");
        tag(fmt::format("a={};", to_string(k.alg)));
        tag(fmt::format("c={}/{};", to_string(_keys->header_canon), to_string(_keys->body_canon)));
        tag(fmt::format("d={};", k.domain));
        tag(fmt::format("s={};", k.selector));
        tag(fmt::format("t={};", static_cast<long long>(now)));
        if (_keys->expiration_s != 0) {
            tag(fmt::format("x={};", static_cast<long long>(now) + static_cast<long long>(_keys->expiration_s)));
        }
        // h=: names joined by ':', folded before a ':' when the line is full.
        out += "\r\n\th=";
        line_start = out.size() - 3;
        for (std::size_t i = 0; i < _h_names.size(); ++i) {
            const std::string_view name = detail::trim_wsp(_h_names[i]);
            if (i != 0) {
                if (out.size() - line_start + 1 + name.size() > signature_line_octets) {
                    out += "\r\n\t";
                    line_start = out.size() - 1;
                }
                out += ':';
            }
            out += name;
        }
        out += ';';
        out += "\r\n\tbh=";
        out += _bh;
        out += ";\r\n\tb=";
    }

    // b='s value, folded into lines of signature_line_octets.
    static void append_folded_b(std::string& out, std::string_view b) {
        std::size_t first = signature_line_octets - 3;  // after "\tb="
        std::size_t i = 0;
        while (i < b.size()) {
            const std::size_t n = std::min(first, b.size() - i);
            if (i != 0) {
                out += "\r\n\t ";
            }
            out.append(b.data() + i, n);
            i += n;
            first = signature_line_octets - 2;
        }
    }

    std::shared_ptr<const key_set> _keys;
    std::vector<signing_key> _signing;
    md_ctx_ptr _hash;         // SHA-256 over the signed header fields
    md_ctx_ptr _copy;         // that state plus one DKIM-Signature header
    md_ctx_ptr _body_hash;    // SHA-256 over the canonical body
    md_ctx_ptr _prefix_hash;  // SHA-256 state after the canonical body prefix
    // Fetched once: EVP_sha256() is a legacy handle that OpenSSL 3 looks up
    // in its provider store (under locks) on every EVP_DigestInit_ex; with
    // the fetched one, a context that had it already is re-initialized.
    std::unique_ptr<EVP_MD, decltype(&EVP_MD_free)> _sha256;
    std::string _prefix_text;
    bool _prefix_ready = false;
    std::uint64_t _prefix_hits = 0;
    std::vector<header_field> _fields;
    std::vector<const signing_key*> _chosen;
    std::vector<std::string_view> _h_names;
    std::string _canon;
    std::string _bh;
    std::string _b;
};

}  // namespace mxpress::mail::dkim
