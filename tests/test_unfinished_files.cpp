// Temporary files never outlive their writer: UnfinishedFile's destructor and keep(); the program's
// SIGINT/SIGTERM/SIGHUP handlers (apps/common/files.h, installed by main()) removing them before
// the process dies as the signal says, in a forked child so the signal is real; and the removal
// of temporaries left by a writer killed outright, by the next atomic write to the same target.
#include "common/files.h"
#include "testing.h"

#include <attnkit/backbones/checkpoint.h>
#include <attnkit/backbones/unfinished_file.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <dirent.h>
#include <fcntl.h>
#include <fstream>
#include <string>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace {


using attnkit::testing::TempDir;

void touch(const std::string& path, int age_seconds = 0) {
  std::ofstream(path) << "x";
  if (age_seconds > 0) {
    struct timespec times[2];
    ::clock_gettime(CLOCK_REALTIME, &times[0]);
    times[0].tv_sec -= age_seconds;
    times[1] = times[0];
    ::utimensat(AT_FDCWD, path.c_str(), times, 0);
  }
}

/// A process id no process has: a child that has exited and been reaped.
pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}

/// Forks a child that installs the program's handlers (after `before`), creates `listed` as an
/// UnfinishedFile and `kept` as one it keeps, says it is ready, and waits; the parent sends it
/// `signals` in order and returns its wait status.
int run_child_and_signal(const std::string& listed, const std::string& kept, const std::vector<int>& signals,
                         void (*before)() = nullptr) {
  int ready[2];
  if (::pipe(ready) != 0) return -1;
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(ready[0]);
    if (before) before();
    attnkit::common::remove_unfinished_files_on_termination();
    touch(listed);
    touch(kept);
    attnkit::UnfinishedFile file(listed);
    attnkit::UnfinishedFile keeper(kept);
    keeper.keep();
    const char byte = 'r';
    if (::write(ready[1], &byte, 1) != 1) ::_exit(3);
    for (;;) ::pause();  // only a signal ends it
  }
  ::close(ready[1]);
  char byte = 0;
  const bool is_ready = ::read(ready[0], &byte, 1) == 1;
  ::close(ready[0]);
  int status = 0;
  for (int s : signals) {
    ::kill(pid, s);
    if (s == signals.back()) break;
    ::usleep(100 * 1000);  // an ignored signal must not end it: the next one does
  }
  ::waitpid(pid, &status, 0);
  return is_ready ? status : -1;
}

}  // namespace

TEST(UnfinishedFile, DestructorRemovesKeepKeepsMoveTransfers) {
  TempDir dir;
  touch(dir.file("a"));
  touch(dir.file("b"));
  touch(dir.file("c"));
  {
    attnkit::UnfinishedFile a(dir.file("a"));
    attnkit::UnfinishedFile b(dir.file("b"));
    b.keep();
    EXPECT_EQ(b.path(), "");
    attnkit::UnfinishedFile c(dir.file("c"));
    attnkit::UnfinishedFile moved(std::move(c));
    EXPECT_EQ(moved.path(), dir.file("c"));
    EXPECT_EQ(dir.files(), (std::vector<std::string>{"a", "b", "c"}));
  }
  EXPECT_EQ(dir.files(), std::vector<std::string>{"b"});

  // Assigning over a live one removes its file first.
  touch(dir.file("d"));
  touch(dir.file("e"));
  attnkit::UnfinishedFile d(dir.file("d"));
  d = attnkit::UnfinishedFile(dir.file("e"));
  EXPECT_EQ(dir.files(), (std::vector<std::string>{"b", "e"}));
  d = attnkit::UnfinishedFile();
  EXPECT_EQ(dir.files(), std::vector<std::string>{"b"});
}

TEST(UnfinishedFile, RemoveUnfinishedFilesRemovesOnlyLiveOnes) {
  TempDir dir;
  touch(dir.file("live"));
  touch(dir.file("kept"));
  attnkit::UnfinishedFile live(dir.file("live"));
  attnkit::UnfinishedFile kept(dir.file("kept"));
  kept.keep();
  attnkit::remove_unfinished_files();
  EXPECT_EQ(dir.files(), std::vector<std::string>{"kept"});
}

TEST(UnfinishedFile, TerminationSignalsRemoveThemAndEndTheProcessAsTheSignalSays) {
  for (const int signal_number : {SIGTERM, SIGINT, SIGHUP}) {
    TempDir dir;
    const int status = run_child_and_signal(dir.file(".out.tmp-1-abc"), dir.file("kept"), {signal_number});
    ASSERT_TRUE(WIFSIGNALED(status)) << strsignal(signal_number) << ": status " << status;
    EXPECT_EQ(WTERMSIG(status), signal_number);  // the shell still sees 128 + the signal
    EXPECT_EQ(dir.files(), std::vector<std::string>{"kept"}) << strsignal(signal_number);
  }
}

TEST(UnfinishedFile, AnIgnoredSignalStaysIgnored) {
  // nohup ignores SIGHUP: the handlers must not turn it back into a way to die.
  TempDir dir;
  const int status = run_child_and_signal(dir.file("unfinished"), dir.file("kept"), {SIGHUP, SIGTERM},
                                          [] { std::signal(SIGHUP, SIG_IGN); });
  ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status;
  EXPECT_EQ(WTERMSIG(status), SIGTERM);  // SIGHUP did not end it
  EXPECT_EQ(dir.files(), std::vector<std::string>{"kept"});
}

TEST(UnfinishedFile, AtomicWritesNameTheirWriterAndRemoveWhatADeadOneLeft) {
  TempDir dir;
  const std::string target = dir.file("model.attnkit");
  EXPECT_EQ(attnkit::unfinished_name_prefix(target, "tmp"),
            dir.file(".model.attnkit.tmp-" + std::to_string(::getpid()) + "-"));

  const std::string dead = std::to_string(dead_pid());
  const std::string mine = std::to_string(::getpid());
  touch(dir.file(".model.attnkit.tmp-" + dead + "-old123"), 600);    // killed writer: removed
  touch(dir.file(".model.attnkit.tmp-" + dead + "-new123"));         // fresh: maybe another machine's
  touch(dir.file(".model.attnkit.tmp-" + mine + "-mine12"), 600);    // a live writer's
  touch(dir.file(".model.attnkit.tmp-Xq81zz"), 600);                 // not in our format
  touch(dir.file(".other.attnkit.tmp-" + dead + "-old123"), 600);    // another target's
  attnkit::write_file_atomically(target, "bytes");
  std::vector<std::string> expected = {".model.attnkit.tmp-" + dead + "-new123", ".model.attnkit.tmp-" + mine + "-mine12",
                                       ".model.attnkit.tmp-Xq81zz", ".other.attnkit.tmp-" + dead + "-old123",
                                       "model.attnkit"};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(dir.files(), expected);

  // The video writer's kind, directly.
  touch(dir.file(".clip.mp4.partial-" + dead + "-video.mp4"), 600);
  EXPECT_EQ(attnkit::remove_stale_unfinished_files(dir.file("clip.mp4"), "partial"), 1);
  EXPECT_EQ(attnkit::remove_stale_unfinished_files(dir.file("clip.mp4"), "partial"), 0);
}
