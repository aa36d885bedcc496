// A user of the installed library: checks an address and dot-stuffs a line.
#include <mxpress/mail/address.hpp>
#include <mxpress/smtp/dot_stuff.hpp>

#include <cstdio>

int main() {
    const auto a = mxpress::mail::check_address("user@Bücher.example");
    std::string out;
    mxpress::smtp::append_dot_stuffed(out, ".x\r\n");
    const bool ok = a.valid() && a.domain() == "xn--bcher-kva.example" && out == "..x\r\n.\r\n";
    std::puts(ok ? "consumer ok" : "consumer FAILED");
    return ok ? 0 : 1;
}
