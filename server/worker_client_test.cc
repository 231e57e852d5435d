#include "server/worker_client.h"

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace prunesvc::server {
namespace {

// A listening loopback socket (not a gRPC server: the test watches the connection itself).
struct Listener {
  int fd = -1;
  int port = 0;
  Listener() {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(fd, 4) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      return;
    }
    port = ntohs(a.sin_port);
  }
  ~Listener() {
    if (fd >= 0) close(fd);
  }
  // Whether a connection arrives within `ms`.
  bool Accepts(int ms) const {
    pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
    if (poll(&p, 1, ms) != 1) return false;
    const int c = accept(fd, nullptr, nullptr);
    if (c < 0) return false;
    close(c);
    return true;
  }
};

// A worker that registers is dialled at once: the connection is opened before any step is sent
// (dispatch-bench: the first wave of 64 dispatches arrived spread over 59–81 ms without it,
// 26–32 ms with it). Dial neither blocks nor needs the worker to answer.
TEST(WorkerClientTest, DialOpensTheConnectionBeforeAnyStep) {
  Listener l;
  ASSERT_GT(l.port, 0);
  std::unique_ptr<WorkerConnector> connector = NewGrpcWorkerConnector();
  const std::string address = absl::StrCat("127.0.0.1:", l.port);
  connector->Dial(address);
  EXPECT_TRUE(l.Accepts(30000));
  // The client a later step gets is the one dialled (one channel per address).
  EXPECT_EQ(connector->Connect(address), connector->Connect(address));
}

}  // namespace
}  // namespace prunesvc::server
