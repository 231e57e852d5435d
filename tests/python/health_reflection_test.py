#!/usr/bin/python3
"""A standard gRPC client against the real servers (issue 2 acceptance).

Uses Debian's python3-grpcio. Stubs are generated at test time with Debian's protoc and
grpc_python_plugin: health and reflection (v1alpha — the only reflection version gRPC 1.51
serves) from the grpc-proto package, copied into a flat directory first because a generated
`grpc/` package would shadow grpcio itself (docs/architecture.md §12).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

ARGS = None
GRPC_PROTO = "/usr/share/grpc-proto"


def generate_stubs(out_dir, proto_dir):
    flat = os.path.join(out_dir, "flat_protos")
    os.makedirs(flat)
    for rel in ("grpc/health/v1/health.proto", "grpc/reflection/v1alpha/reflection.proto"):
        shutil.copy(os.path.join(GRPC_PROTO, rel), flat)
    gen = os.path.join(out_dir, "gen")
    os.makedirs(gen)
    plugin = "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin"
    subprocess.run(["protoc", "-I", flat, "--python_out", gen, "--grpc_python_out", gen, plugin,
                    "health.proto", "reflection.proto"], check=True)
    subprocess.run(["protoc", "-I", proto_dir, "--python_out", gen, "--grpc_python_out", gen,
                    plugin, "prune/v1/job.proto", "prune/v1/pruning_service.proto",
                    "prune/v1/worker.proto"], check=True)
    sys.path.insert(0, gen)


class HealthAndReflectionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="pyrefl-")
        generate_stubs(cls.tmp, ARGS.proto_dir)
        ready = os.path.join(cls.tmp, "ready.json")
        cls.log = open(os.path.join(cls.tmp, "scheduler.log"), "w")
        cls.proc = subprocess.Popen(
            [os.path.join(ARGS.bin_dir, "prune-scheduler"), "--host=127.0.0.1", "--port=0",
             "--metrics-port=-1", "--state-dir=" + os.path.join(cls.tmp, "state"),
             "--local-workers=1", "--worker-threads=1", "--ready-file=" + ready],
            stdout=cls.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while not os.path.exists(ready):
            if time.time() > deadline or cls.proc.poll() is not None:
                raise RuntimeError("scheduler did not start; see " + cls.log.name)
            time.sleep(0.05)
        with open(ready) as f:
            cls.port = json.load(f)["port"]

    @classmethod
    def tearDownClass(cls):
        cls.proc.send_signal(signal.SIGTERM)
        cls.proc.wait(timeout=30)
        cls.log.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def channel(self, address):
        import grpc
        ch = grpc.insecure_channel(address)
        grpc.channel_ready_future(ch).result(timeout=10)
        return ch

    def worker_address(self):
        import grpc
        from prune.v1 import pruning_service_pb2, pruning_service_pb2_grpc
        stub = pruning_service_pb2_grpc.PruningServiceStub(self.channel(f"127.0.0.1:{self.port}"))
        deadline = time.time() + 20
        while time.time() < deadline:
            resp = stub.ListWorkers(pruning_service_pb2.ListWorkersRequest(), timeout=5)
            idle = [w for w in resp.workers if w.state == pruning_service_pb2.WORKER_IDLE]
            if idle:
                return idle[0].address
            time.sleep(0.1)
        self.fail("no worker registered within 20 s")

    def health(self, address, service=""):
        import health_pb2
        import health_pb2_grpc
        stub = health_pb2_grpc.HealthStub(self.channel(address))
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def services(self, address):
        import reflection_pb2
        import reflection_pb2_grpc
        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel(address))
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = set()
        for r in responses:
            names.update(s.name for s in r.list_services_response.service)
        return names

    def file_for(self, address, symbol):
        import reflection_pb2
        import reflection_pb2_grpc
        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel(address))
        responses = list(stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)]),
            timeout=5))
        return responses[0]

    def test_scheduler(self):
        import health_pb2
        addr = f"127.0.0.1:{self.port}"
        self.assertEqual(self.health(addr), health_pb2.HealthCheckResponse.SERVING)
        self.assertEqual(self.health(addr, "prune.v1.PruningService"),
                         health_pb2.HealthCheckResponse.SERVING)
        names = self.services(addr)
        for want in ("prune.v1.PruningService", "prune.v1.WorkerRegistry", "grpc.health.v1.Health",
                     "grpc.reflection.v1alpha.ServerReflection"):
            self.assertIn(want, names)
        resp = self.file_for(addr, "prune.v1.PruningService")
        self.assertTrue(resp.file_descriptor_response.file_descriptor_proto)

    def test_worker(self):
        import health_pb2
        addr = self.worker_address()
        self.assertEqual(self.health(addr), health_pb2.HealthCheckResponse.SERVING)
        names = self.services(addr)
        self.assertIn("prune.v1.PruningWorker", names)
        self.assertIn("grpc.health.v1.Health", names)
        self.assertNotIn("prune.v1.PruningService", names)

    def test_unknown_job_is_not_found_with_a_message(self):
        # A standard client calling a job RPC: the error says what was not found.
        import grpc
        from prune.v1 import pruning_service_pb2, pruning_service_pb2_grpc
        stub = pruning_service_pb2_grpc.PruningServiceStub(self.channel(f"127.0.0.1:{self.port}"))
        with self.assertRaises(grpc.RpcError) as cm:
            stub.GetJob(pruning_service_pb2.GetJobRequest(job_id="job-nope"), timeout=5)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertIn("job-nope", cm.exception.details())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--proto-dir", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
