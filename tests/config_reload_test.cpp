// SIGHUP's configuration reload (engine/config_reload.hpp): a valid file
// is taken, with what a run cannot change kept and named; an invalid one
// changes nothing and says why, naming the file and line.
#include "mxpress/engine/config_reload.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

namespace {

using namespace mxpress;

class scratch_file {
public:
    scratch_file() {
        char name[] = "/tmp/mxpress-reload-XXXXXX";
        const int fd = ::mkstemp(name);
        EXPECT_GE(fd, 0);
        ::close(fd);
        path = name;
    }
    ~scratch_file() { std::remove(path.c_str()); }
    void write(const std::string& text) const {
        std::ofstream out(path, std::ios::trunc);
        out << text;
    }
    std::string path;
};

TEST(ConfigReload, AValidFileIsTakenAndTheGenerationMoves) {
    scratch_file f;
    f.write("[defaults]\nmax_message_rate = \"20/s\"\nconnections_max = 4\n");
    engine::config_reloader r(f.path, engine::load_config(f.path));
    EXPECT_EQ(r.generation(), 0u);
    EXPECT_EQ(r.current()->connections_max, 4u);

    f.write(
        "[defaults]\nmax_message_rate = \"5/s\"\nconnections_max = 2\n\n[domain.\"slow.test\"]\n"
        "max_message_rate = \"1/min\"\n");
    const engine::config_reloader::result res = r.reload();
    ASSERT_TRUE(res.applied) << res.message;
    EXPECT_EQ(res.message, "SIGHUP: " + f.path + " reloaded");
    EXPECT_EQ(r.generation(), 1u);
    EXPECT_EQ(r.current()->connections_max, 2u);
    EXPECT_EQ(r.current()->max_message_rate.text, "5/s");
    EXPECT_EQ(r.current()->limits_for("slow.test").max_message_rate->text, "1/min");
    EXPECT_EQ(res.in_force, r.current());
}

TEST(ConfigReload, AnInvalidFileChangesNothingAndNamesFileAndLine) {
    scratch_file f;
    f.write("[defaults]\nconnections_max = 4\n");
    engine::config_reloader r(f.path, engine::load_config(f.path));
    const auto before = r.current();

    f.write("[defaults]\nconnections_max = 4\nmax_message_rate = \"fast\"\n");
    engine::config_reloader::result res = r.reload();
    EXPECT_FALSE(res.applied);
    EXPECT_NE(res.message.find(f.path + ":3:"), std::string::npos) << res.message;
    EXPECT_NE(res.message.find("max_message_rate"), std::string::npos) << res.message;
    EXPECT_NE(res.message.find("the configuration in force stays"), std::string::npos) << res.message;
    EXPECT_EQ(r.generation(), 0u);
    EXPECT_EQ(r.current(), before);

    std::remove(f.path.c_str());
    res = r.reload();
    EXPECT_FALSE(res.applied);
    EXPECT_NE(res.message.find("cannot open configuration"), std::string::npos) << res.message;
    EXPECT_EQ(r.current(), before);
}

TEST(ConfigReload, WhatARunCannotChangeIsKeptAndNamed) {
    scratch_file f;
    f.write(
        "[defaults]\ntls_sessions_max = 100\n\n[dns]\ntries = 3\n\n[provider.google]\n"
        "match = [\"*.google.com\"]\nmax_message_rate = \"100/min\"\nconnections_max = 4\n");
    engine::config_reloader r(f.path, engine::load_config(f.path));

    // The provider's limits may change; its match may not.
    f.write(
        "[defaults]\ntls_sessions_max = 100\n\n[dns]\ntries = 3\n\n[provider.google]\n"
        "match = [\"*.google.com\"]\nmax_message_rate = \"50/min\"\nconnections_max = 2\n");
    engine::config_reloader::result res = r.reload();
    ASSERT_TRUE(res.applied);
    EXPECT_EQ(res.message.find("restart"), std::string::npos) << res.message;
    EXPECT_EQ(r.current()->providers.at(0).max_message_rate->text, "50/min");
    EXPECT_EQ(r.current()->providers.at(0).connections_max, 2u);

    f.write(
        "[defaults]\ntls_sessions_max = 7\nconnections_max = 9\n\n[dns]\ntries = 5\n\n[provider.google]\n"
        "match = [\"*.google.com\", \"*.googlemail.com\"]\nmax_message_rate = \"50/min\"\n");
    res = r.reload();
    ASSERT_TRUE(res.applied);
    EXPECT_NE(res.message.find("a restart is needed to change [defaults] tls_sessions_max, [dns], [provider] "
                               "sections, their match and tls (kept as the run started)"),
              std::string::npos)
        << res.message;
    const auto c = r.current();
    EXPECT_EQ(c->connections_max, 9u);  // taken
    EXPECT_EQ(c->tls_sessions_max, 100u);
    EXPECT_EQ(c->dns_tries, 3u);
    ASSERT_EQ(c->providers.size(), 1u);
    EXPECT_EQ(c->providers[0].match.size(), 1u);
    EXPECT_EQ(c->providers[0].connections_max, 2u);  // the sections as they were, whole
}

}  // namespace
