// tests/test_util.hpp — helpers shared by the unit tests.
#pragma once

#include <array>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <string>

#include <unistd.h>

namespace mxpress::test {

// A temporary directory removed at the end of the test.
class temp_dir {
public:
    temp_dir() {
        char tmpl[] = "/tmp/mxpress-test-XXXXXX";
        const char* p = ::mkdtemp(tmpl);
        if (p == nullptr) {
            std::abort();
        }
        _path = p;
    }
    ~temp_dir() {
        const std::string cmd = "rm -rf '" + _path + "'";
        [[maybe_unused]] int rc = std::system(cmd.c_str());
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    const std::string& path() const { return _path; }
    std::string file(const std::string& name) const { return _path + "/" + name; }
    std::string write(const std::string& name, const std::string& content) const {
        const std::string p = file(name);
        std::ofstream(p, std::ios::binary) << content;
        return p;
    }

private:
    std::string _path;
};

inline std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The clock that renders give Date: and DKIM t= in unit tests: 2026-11-16.
inline std::time_t fixed_clock() {
    return 1'795'000'000;
}

// Runs a shell command, returns its stdout and sets `status` to its exit code.
inline std::string run(const std::string& cmd, int& status) {
    std::string out;
    FILE* p = ::popen(cmd.c_str(), "r");
    if (p == nullptr) {
        status = -1;
        return out;
    }
    std::array<char, 4096> buf{};
    std::size_t n = 0;
    while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) {
        out.append(buf.data(), n);
    }
    const int rc = ::pclose(p);
    status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    return out;
}

// A file of the throwaway CA and certificates that scripts/make-test-certs
// makes, once per test binary (ca.crt, mx.crt, mx.key, self.crt, ...).
inline std::string test_cert(const std::string& name) {
    static const temp_dir dir;
    static const int status =
        std::system((std::string(MXPRESS_SOURCE_DIR) + "/scripts/make-test-certs " + dir.path()).c_str());
    if (status != 0) {
        std::fprintf(stderr, "scripts/make-test-certs failed\n");
        std::abort();
    }
    return dir.file(name);
}

// Debian's interpreter, with its python3-* packages (not a pyenv shim).
inline const char* python3() {
    return "/usr/bin/python3";
}

}  // namespace mxpress::test
