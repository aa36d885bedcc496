// mxpress/mail/input_error.hpp — the error raised for bad user input files.
//
// Carries the file name and, where there is one, the 1-based line, so that
// the runner can print "FILE:LINE: what" and exit with status 2.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

namespace mxpress::mail {

class input_error : public std::runtime_error {
public:
    input_error(std::string file, std::uint64_t line, const std::string& what)
        : std::runtime_error(what), _file(std::move(file)), _line(line) {}

    const std::string& file() const noexcept { return _file; }
    // 0 when the error concerns the whole file (missing, unreadable, empty).
    std::uint64_t line() const noexcept { return _line; }

    std::string describe() const {
        std::string out = _file;
        if (_line != 0) {
            out += ':';
            out += std::to_string(_line);
        }
        out += ": ";
        out += what();
        return out;
    }

private:
    std::string _file;
    std::uint64_t _line;
};

// The whole of a file the user named (`what` says which, for the error):
// input_error naming the file when it cannot be opened or read.
inline std::string read_input_file(const std::string& path, const char* what) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw input_error(path, 0, std::string("cannot open ") + what + ": " + std::strerror(errno));
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad()) {
        throw input_error(path, 0, std::string("cannot read ") + what + ": " + std::strerror(errno));
    }
    return ss.str();
}

}  // namespace mxpress::mail
