// Fuzzes the template compiler and renderer: the input is a template; the
// columns are fixed; each compiled template is rendered with values that
// hold CR/LF, non-ASCII and long runs. Whatever renders must keep its
// promise: no merge value starts a header line.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "mxpress/mail/message_template.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    static const std::vector<std::string> columns = {"email", "name", "note"};
    try {
        const auto t = mxpress::mail::message_template::compile(text, "fuzz.eml", columns);
        mxpress::mail::renderer_options o;
        o.from = "bounce@sender.example";
        o.message_id_seed = 1;
        o.eight_bit_allowed = (size % 2) == 0;
        mxpress::mail::renderer r(t, o);
        const std::vector<std::string> values = {"a@x.org", "x\r\nInjected: yes", std::string(1200, 'y') + "東京"};
        const std::vector<std::string_view> fields(values.begin(), values.end());
        std::string out;
        const auto res = r.render(fields, out);
        // Only meaningful when the template itself does not write that header.
        if (res.ok() && text.find("njected") == std::string_view::npos) {
            const std::size_t end = out.find("\r\n\r\n");
            const std::string_view headers = std::string_view(out).substr(0, end);
            if (headers.find("\r\nInjected:") != std::string_view::npos || headers.starts_with("Injected:")) {
                std::abort();
            }
        }
    } catch (const mxpress::mail::input_error&) {
    }
    return 0;
}
