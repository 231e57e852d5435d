#!/usr/bin/python3
"""Models through the scheduler's blob store (issue 19): `prunectl upload-model` stores the bundled
tiny model, and a job on its blob:// URI SUCCEEDS on a worker that shares no directory with the
scheduler (separate working and state/cache directories, no --allowed-model-roots anywhere).
UploadModel's protocol is driven directly with the generated stubs: resume file by file, malformed
manifests and data, and tenant isolation (with --auth-tokens).

Run by ctest with --bin-dir, --source-dir and --python-dir (build/python: the generated stubs).
"""
import argparse
import hashlib
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
ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789"
ADMIN = "admin-token-0123456789"
WORKER_TOKEN = "worker-token-0123456789"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class BlobModelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, ARGS.python_dir)
        import grpc
        from prune.v1 import pruning_service_pb2 as pb
        from prune.v1 import pruning_service_pb2_grpc as pbg
        cls.grpc, cls.pb = grpc, pb
        cls.tmp = tempfile.mkdtemp(prefix="blobmodel-")
        cls.model = os.path.join(ARGS.source_dir, "models", "tiny-llava-shapes")
        # Three directories that share nothing: the scheduler's, the worker's, the client's.
        cls.sched_dir, cls.worker_dir, cls.client_dir = (
            os.path.join(cls.tmp, d) for d in ("scheduler", "worker", "client"))
        for d in (cls.sched_dir, cls.worker_dir, cls.client_dir):
            os.makedirs(d)
        with open(os.path.join(cls.sched_dir, "tokens"), "w") as f:
            f.write("%s alice user\n%s bob user\n%s ops admin\n" % (ALICE, BOB, ADMIN))
        for d in (cls.sched_dir, cls.worker_dir):
            with open(os.path.join(d, "worker-token"), "w") as f:
                f.write(WORKER_TOKEN + "\n")
        cls.procs, cls.logs = [], []
        ready = os.path.join(cls.sched_dir, "ready.json")
        cls.start([os.path.join(ARGS.bin_dir, "prune-scheduler"), "--host=127.0.0.1", "--port=0",
                   "--metrics-port=-1", "--state-dir=state", "--ready-file=ready.json",
                   "--auth-tokens=tokens", "--worker-token-file=worker-token"],
                  cls.sched_dir, "scheduler")
        deadline = time.time() + 60
        while not os.path.exists(ready):
            if time.time() > deadline or cls.procs[0].poll() is not None:
                raise RuntimeError("scheduler did not start; see " + cls.logs[0].name)
            time.sleep(0.05)
        with open(ready) as f:
            cls.addr = "127.0.0.1:%d" % json.load(f)["port"]
        cls.start([os.path.join(ARGS.bin_dir, "prune-worker"), "--host=127.0.0.1", "--port=0",
                   "--scheduler=" + cls.addr, "--cache-dir=cache", "--threads=1",
                   "--worker-token-file=worker-token"], cls.worker_dir, "worker")
        cls.channel = grpc.insecure_channel(cls.addr)
        cls.stub = pbg.PruningServiceStub(cls.channel)
        deadline = time.time() + 60
        while "idle" not in cls.prunectl("workers", token=ADMIN).stdout.lower():
            if time.time() > deadline:
                raise RuntimeError("no worker registered")
            time.sleep(0.2)

    @classmethod
    def start(cls, argv, cwd, name):
        log = open(os.path.join(cls.tmp, name + ".log"), "w")
        cls.logs.append(log)
        cls.procs.append(subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT))

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        for p in reversed(cls.procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in cls.logs:
            log.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def prunectl(cls, *args, token=ALICE, check=False):
        env = dict(os.environ)
        env.pop("PRUNESVC_TOKEN", None)
        argv = [os.path.join(ARGS.bin_dir, "prunectl")] + list(args) + ["--addr=" + cls.addr]
        if token:
            argv.append("--token=" + token)
        run = subprocess.run(argv, cwd=cls.client_dir, capture_output=True, text=True,
                             timeout=600, env=env)
        if check and run.returncode != 0:
            raise AssertionError("prunectl %s: exit %d\n%s" % (args, run.returncode, run.stderr))
        return run

    # ---- helpers over the generated stubs ----
    def manifest(self, files=None, name="tiny"):
        """A ModelManifestInfo of the bundled model (or of `files`: (path, bytes) pairs)."""
        m = self.pb.ModelManifestInfo(name=name)
        if files is None:
            for entry in sorted(os.listdir(self.model)):
                p = os.path.join(self.model, entry)
                m.files.add(path=entry, size_bytes=os.path.getsize(p), sha256=sha256_file(p))
        else:
            for path, data in files:
                m.files.add(path=path, size_bytes=len(data),
                            sha256=hashlib.sha256(data).hexdigest())
        return m

    def upload(self, manifest, data_msgs=(), token=ALICE):
        def requests():
            yield self.pb.UploadModelRequest(manifest=manifest)
            for sha, data in data_msgs:
                yield self.pb.UploadModelRequest(data=self.pb.ModelFileData(sha256=sha, data=data))
        return self.stub.UploadModel(requests(), metadata=[("authorization", "Bearer " + token)],
                                     timeout=60)

    def assert_refused(self, code, fragment, manifest, data_msgs=(), token=ALICE):
        with self.assertRaises(self.grpc.RpcError) as cm:
            self.upload(manifest, data_msgs, token)
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        self.assertIn(fragment, cm.exception.details())

    # ---- tests ----
    def test_job_on_uploaded_model_succeeds_without_shared_directories(self):
        up = self.prunectl("upload-model", self.model, "--json", check=True)
        resp = json.loads(up.stdout)
        uri = resp["modelUri"]
        self.assertTrue(uri.startswith("blob://sha256:"), uri)
        again = json.loads(self.prunectl("upload-model", self.model, "--json", check=True).stdout)
        self.assertEqual(again["modelUri"], uri)
        self.assertTrue(again.get("alreadyPresent"))
        # The Python client computes the same manifest, hence the same model id.
        import prunesvc
        with prunesvc.Client(self.addr, token=ALICE) as c:
            self.assertEqual(c.upload_model(self.model).model_uri, uri)

        subprocess.run([os.path.join(ARGS.bin_dir, "shapes-vqa"), "--seed=1000", "--split=search",
                        "--count=8", "--out=search"], cwd=self.client_dir, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ds = self.prunectl("upload-dataset", "search", check=True).stdout.strip()
        job = self.prunectl("submit", "--model=" + uri, "--dataset=" + ds, "--flops-budget=0.6",
                            "--strategy=UNIFORM", check=True).stdout.strip()
        watch = self.prunectl("watch", job)
        self.assertEqual(watch.returncode, 0, watch.stdout + watch.stderr)
        got = json.loads(self.prunectl("get", job, "--json", check=True).stdout)
        self.assertEqual(got["state"], "SUCCEEDED")
        fetched = self.prunectl("fetch", job, "--out=pruned", check=True)
        self.assertTrue(os.path.exists(os.path.join(self.client_dir, "pruned", "report.json")),
                        fetched.stderr)
        # The worker laid the model out in its own cache, every file verified by its sha256.
        laid = os.path.join(self.worker_dir, "cache", "models", uri.split(":")[-1])
        for entry in os.listdir(self.model):
            self.assertEqual(sha256_file(os.path.join(laid, entry)),
                             sha256_file(os.path.join(self.model, entry)), entry)
        # Another tenant cannot run on it: the model id is NOT_FOUND for bob.
        bob = self.prunectl("submit", "--model=" + uri, "--dataset=" + ds, "--flops-budget=0.6",
                            "--strategy=UNIFORM", token=BOB)
        self.assertNotEqual(bob.returncode, 0)
        self.assertIn("NOT_FOUND", bob.stderr)

    def test_resume_sends_only_missing_files(self):
        files = [("config.json", b'{"model_type": "llava"}'), ("a/weights.bin", b"w" * 3000000),
                 ("b.txt", b"second file"), ("empty", b"")]
        m = self.manifest(files, name="resume")
        probe = self.upload(m)
        shas = {p: hashlib.sha256(d).hexdigest() for p, d in files}
        # The empty file is stored from the manifest alone; the three others are missing.
        self.assertEqual(sorted(probe.missing_sha256),
                         sorted(shas[p] for p in ("config.json", "a/weights.bin", "b.txt")))
        self.assertEqual(probe.model_uri, "")
        # One file, whole, in chunks (the last one short); then the call ends.
        big = dict(files)["a/weights.bin"]
        chunks = [(shas["a/weights.bin"], big[i:i + (1 << 20)]) for i in range(0, len(big), 1 << 20)]
        part = self.upload(m, chunks)
        self.assertEqual(sorted(part.missing_sha256), sorted([shas["config.json"], shas["b.txt"]]))
        self.assertEqual(part.stored_bytes, len(big))
        # An interrupted file is not kept: half of b.txt, then the client cancels.
        def cancelled():
            yield self.pb.UploadModelRequest(manifest=m)
            yield self.pb.UploadModelRequest(
                data=self.pb.ModelFileData(sha256=shas["b.txt"], data=b"second"))
            time.sleep(0.5)
            call.cancel()
        call = self.stub.UploadModel.future(cancelled(),
                                            metadata=[("authorization", "Bearer " + ALICE)])
        with self.assertRaises(self.grpc.FutureCancelledError):
            call.result(timeout=30)
        probe = self.upload(m)
        self.assertEqual(sorted(probe.missing_sha256),
                         sorted([shas["config.json"], shas["b.txt"]]))
        done = self.upload(m, [(shas["config.json"], dict(files)["config.json"]),
                               (shas["b.txt"], b"second file")])
        self.assertEqual(list(done.missing_sha256), [])
        self.assertTrue(done.model_uri.startswith("blob://sha256:"))
        self.assertEqual(done.size_bytes, sum(len(d) for _, d in files))
        # The same model id for the same files in any order (canonical manifest).
        reordered = self.manifest(list(reversed(files)), name="resume")
        self.assertEqual(self.upload(reordered).model_id, done.model_id)

    def test_malformed_uploads_name_the_problem(self):
        bad = self.grpc.StatusCode.INVALID_ARGUMENT
        cfg = ("config.json", b"{}")
        for path, fragment in (("../x", "files[1].path"), ("/abs", "is absolute"),
                               ("a//b", "empty"), ("a\\b", "backslash")):
            self.assert_refused(bad, fragment, self.manifest([cfg, (path, b"x")]))
        self.assert_refused(bad, "no config.json", self.manifest([("weights", b"x")]))
        self.assert_refused(bad, "listed twice", self.manifest([cfg, cfg]))
        self.assert_refused(bad, "both a file and a directory",
                            self.manifest([cfg, ("a", b"1"), ("a/b", b"2")]))
        m = self.manifest([cfg])
        m.files[0].sha256 = "ABC"
        self.assert_refused(bad, "files[0].sha256", m)
        # Data that does not belong: an unknown file, too many bytes, bytes with another hash,
        # a file sent twice, a file cut short at the end of the stream.
        data = b"0123456789" * 10
        m = self.manifest([cfg, ("w", data)])
        sha = hashlib.sha256(data).hexdigest()
        self.assert_refused(bad, "names no file of the manifest", m, [("f" * 64, b"x")])
        self.assert_refused(bad, "more than its 100 bytes", m, [(sha, data + b"!")])
        self.assert_refused(bad, "do not hash to its sha256", m, [(sha, b"x" * 100)])
        self.assert_refused(bad, "already sent", m,
                            [(sha, data), (hashlib.sha256(b"{}").hexdigest(), b"{}"), (sha, data)])
        self.assert_refused(bad, "50 bytes arrived", m, [(sha, data[:50])])
        # No manifest first.
        with self.assertRaises(self.grpc.RpcError) as cm:
            self.stub.UploadModel(iter([self.pb.UploadModelRequest(
                data=self.pb.ModelFileData(sha256=sha, data=b"x"))]),
                metadata=[("authorization", "Bearer " + ALICE)], timeout=30)
        self.assertEqual(cm.exception.code(), bad)
        self.assertIn("first message must carry the manifest", cm.exception.details())
        # No token: UNAUTHENTICATED before anything is read.
        with self.assertRaises(self.grpc.RpcError) as cm:
            self.stub.UploadModel(iter([self.pb.UploadModelRequest(manifest=m)]), timeout=30)
        self.assertEqual(cm.exception.code(), self.grpc.StatusCode.UNAUTHENTICATED)
        # A blob URI that is not one.
        run = self.prunectl("submit", "--model=blob://sha256:xyz", "--dataset=sha256:" + "0" * 64,
                            "--flops-budget=0.5")
        self.assertEqual(run.returncode, 2, run.stderr)
        self.assertIn("blob://sha256:<64 lowercase hex digits>", run.stderr)

    def test_list_and_delete_models(self):
        shared = ("config.json", b'{"shared": true}')
        a = self.manifest([shared, ("a.bin", b"only in a")], name="model-a")
        b = self.manifest([shared, ("b.bin", b"only in b")], name="model-b")
        for m, files in ((a, [shared, ("a.bin", b"only in a")]),
                         (b, [shared, ("b.bin", b"only in b")])):
            done = self.upload(m, [(hashlib.sha256(d).hexdigest(), d) for _, d in files])
            self.assertTrue(done.model_uri)
        uri_a = self.upload(a).model_uri
        listed = json.loads(self.prunectl("models", "--json", check=True).stdout)["models"]
        names = {m["name"]: m for m in listed}
        self.assertIn("model-a", names)
        self.assertEqual(names["model-a"]["numFiles"], 2)
        self.assertEqual(int(names["model-a"]["sizeBytes"]), len(b'{"shared": true}') + 9)
        # Bob sees none of Alice's models and cannot delete them.
        bob = json.loads(self.prunectl("models", "--json", token=BOB, check=True).stdout)
        self.assertEqual(bob.get("models", []), [])
        run = self.prunectl("delete-model", uri_a, token=BOB)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("NOT_FOUND", run.stderr)
        # Deleting A drops a.bin; config.json stays, model B still lists it.
        self.prunectl("delete-model", uri_a, check=True)
        listed = json.loads(self.prunectl("models", "--json", check=True).stdout)["models"]
        self.assertNotIn("model-a", [m["name"] for m in listed])
        probe = self.upload(a)
        self.assertEqual(sorted(probe.missing_sha256),
                         [hashlib.sha256(b"only in a").hexdigest()])
        run = self.prunectl("delete-model", uri_a)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("NOT_FOUND", run.stderr)

    def test_tenants_do_not_see_each_others_files(self):
        files = [("config.json", b'{"tenant": "alice"}'), ("w", b"alice's weights")]
        m = self.manifest(files, name="private")
        shas = [hashlib.sha256(d).hexdigest() for _, d in files]
        done = self.upload(m, list(zip(shas, [d for _, d in files])))
        self.assertTrue(done.model_uri)
        # Bob learns nothing from the probe: every file is missing for him, no model_uri.
        probe = self.upload(m, token=BOB)
        self.assertEqual(sorted(probe.missing_sha256), sorted(shas))
        self.assertEqual(probe.model_uri, "")


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--source-dir", required=True)
    parser.add_argument("--python-dir", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
