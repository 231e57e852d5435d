"""prunesvc.Client: PruningService from Python, with what prunectl adds on top of the RPCs.

Every call has a deadline (`timeout` for unary calls, `stream_timeout` for one upload, one fetch
attempt or one watch connection); errors are the typed exceptions of prunesvc.errors. `watch`
and `fetch` reconnect after a dropped connection and resume (by event sequence, by byte offset).
A Client is safe to share between threads (gRPC channels are).
"""
import hashlib
import io
import json
import os
import shutil
import tarfile
import time

import grpc
from google.protobuf import json_format

from prune.v1 import job_pb2, pruning_service_pb2, pruning_service_pb2_grpc
from prunesvc import errors

CHUNK = 1 << 20
TERMINAL_STATES = frozenset({job_pb2.SUCCEEDED, job_pb2.FAILED, job_pb2.CANCELLED})
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def is_terminal_event(event):
    return event.HasField("state_changed") and event.state_changed.to in TERMINAL_STATES


def _deterministic_tar(directory):
    """The directory as tar bytes: sorted paths, fixed mode, owner and mtime (as prunectl packs
    it), so the same files always give the same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                if not os.path.isfile(path) or os.path.islink(path):
                    raise errors.InvalidArgument(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{path}: only regular files can be uploaded")
                rel = os.path.relpath(path, directory)
                info = tarfile.TarInfo(rel)
                info.size = os.path.getsize(path)
                info.mode = 0o644
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    return buf.getvalue()


def _safe_extract(tar_path, dest):
    """Unpacks regular files and directories; refuses absolute paths, `..`, links and special
    files (an artifact never has them)."""
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            name = m.name[2:] if m.name.startswith("./") else m.name
            if name in ("", "."):
                continue
            if os.path.isabs(name) or ".." in name.split("/"):
                raise errors.DataLoss(grpc.StatusCode.DATA_LOSS,
                                      f"artifact entry {m.name!r} leaves the directory")
            target = os.path.join(dest, name)
            if m.isdir():
                os.makedirs(target, exist_ok=True)
            elif m.isfile():
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with tar.extractfile(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
            else:
                raise errors.DataLoss(grpc.StatusCode.DATA_LOSS,
                                      f"artifact entry {m.name!r} is not a file or directory")


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _verify_manifest(tree):
    """Every file is listed in MANIFEST.sha256 with its hash, and nothing else is there."""
    listed = set()
    with open(os.path.join(tree, "MANIFEST.sha256")) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            digest, rel = line[:64], line[66:]
            if len(line) < 67 or line[64] != " ":
                raise errors.DataLoss(grpc.StatusCode.DATA_LOSS,
                                      f"MANIFEST.sha256: malformed line {line!r}")
            if _sha256_file(os.path.join(tree, rel)) != digest:
                raise errors.DataLoss(grpc.StatusCode.DATA_LOSS, f"{rel}: sha256 mismatch")
            listed.add(rel)
    for root, _, files in os.walk(tree):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), tree)
            if rel != "MANIFEST.sha256" and rel not in listed:
                raise errors.DataLoss(grpc.StatusCode.DATA_LOSS,
                                      f"{rel} is not listed in MANIFEST.sha256")


class Client:
    """A connection to a prunesvc scheduler.

    token: bearer token of a scheduler with --auth-tokens (default: $PRUNESVC_TOKEN).
    tls_ca: PEM file of the CA that verifies the scheduler (default: $PRUNESVC_TLS_CA); with it,
      or with tls=True (the system roots), the channel uses TLS.
    """

    def __init__(self, address="127.0.0.1:50051", token=None, tls_ca=None, tls=False,
                 timeout=5.0, stream_timeout=3600.0):
        self.address = address
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        token = token if token is not None else os.environ.get("PRUNESVC_TOKEN", "")
        self._metadata = (("authorization", "Bearer " + token),) if token else ()
        tls_ca = tls_ca if tls_ca is not None else os.environ.get("PRUNESVC_TLS_CA", "")
        if tls_ca or tls:
            roots = None
            if tls_ca:
                with open(tls_ca, "rb") as f:
                    roots = f.read()
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(roots))
        else:
            self._channel = grpc.insecure_channel(address)
        self._stub = pruning_service_pb2_grpc.PruningServiceStub(self._channel)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- unary calls -------------------------------------------------------------------------

    def _unary(self, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None

    def get(self, job_id):
        return self._unary(self._stub.GetJob, pruning_service_pb2.GetJobRequest(job_id=job_id))

    def cancel(self, job_id, reason=""):
        return self._unary(self._stub.CancelJob,
                           pruning_service_pb2.CancelJobRequest(job_id=job_id, reason=reason))

    def list(self, states=(), labels=None, page_size=100, all_pages=True):
        """Jobs, newest first; `states` by name ("RUNNING") or value; `labels` must all match."""
        req = pruning_service_pb2.ListJobsRequest(page_size=page_size)
        for s in states:
            req.states.append(job_pb2.JobState.Value(s) if isinstance(s, str) else s)
        for k, v in (labels or {}).items():
            req.labels[k] = v
        jobs = []
        while True:
            resp = self._unary(self._stub.ListJobs, req)
            jobs.extend(resp.jobs)
            if not all_pages or not resp.next_page_token:
                return jobs
            req.page_token = resp.next_page_token

    def workers(self):
        return list(self._unary(self._stub.ListWorkers,
                                pruning_service_pb2.ListWorkersRequest()).workers)

    def datasets(self):
        return list(self._unary(self._stub.ListDatasets,
                                pruning_service_pb2.ListDatasetsRequest()).datasets)

    def delete_job(self, job_id):
        self._unary(self._stub.DeleteJob, pruning_service_pb2.DeleteJobRequest(job_id=job_id))

    def delete_dataset(self, dataset_id):
        self._unary(self._stub.DeleteDataset,
                    pruning_service_pb2.DeleteDatasetRequest(dataset_id=dataset_id))

    def models(self):
        return list(self._unary(self._stub.ListModels,
                                pruning_service_pb2.ListModelsRequest()).models)

    def delete_model(self, model_id):
        """`model_id`: "sha256:..." or the model's blob:// URI."""
        return self._unary(self._stub.DeleteModel,
                           pruning_service_pb2.DeleteModelRequest(model_id=model_id))

    def submit(self, job_file=None, **fields):
        """Submits a job from a YAML or JSON job file and/or JobSpec fields as keyword arguments
        (proto field names; enums by name; keywords override the file). A plain model path is
        made a file:// URI. Returns the Job (job.deduplicated() is not kept: compare ids)."""
        spec = {}
        if job_file:
            with open(job_file) as f:
                text = f.read()
            if job_file.endswith((".yaml", ".yml")):
                import yaml  # Debian's python3-yaml
                spec = yaml.safe_load(text) or {}
            else:
                spec = json.loads(text)
            if not isinstance(spec, dict):
                raise errors.InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT,
                                             f"{job_file}: a job file is a mapping of fields")
        spec.update(fields)
        # Enum values by name in any case, as prunectl takes them ("uniform", "N_M").
        for field in job_pb2.JobSpec.DESCRIPTOR.fields:
            for key in (field.name, field.json_name):
                if field.enum_type is not None and isinstance(spec.get(key), str):
                    spec[key] = spec[key].upper()
        uri = spec.get("model_uri") or spec.get("modelUri")
        if uri and "://" not in uri:
            spec.pop("modelUri", None)
            spec["model_uri"] = "file://" + os.path.abspath(uri)
        try:
            msg = json_format.ParseDict(spec, job_pb2.JobSpec())
        except json_format.ParseError as e:
            raise errors.InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        resp = self._unary(self._stub.SubmitJob, pruning_service_pb2.SubmitJobRequest(spec=msg))
        return resp.job

    # ---- streams -----------------------------------------------------------------------------

    def upload_dataset(self, path, name=None):
        """Uploads a sample set: a directory with samples.jsonl at its root (packed into a tar
        deterministically) or a tar file. Returns the UploadDatasetResponse (dataset_id,
        num_samples, already_present)."""
        if os.path.isdir(path):
            data = _deterministic_tar(path)
        else:
            with open(path, "rb") as f:
                data = f.read()
        info = pruning_service_pb2.DatasetInfo(
            name=name or os.path.basename(os.path.normpath(path)), format="tar",
            size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

        def requests():
            yield pruning_service_pb2.UploadDatasetRequest(info=info)
            for off in range(0, len(data), CHUNK):
                yield pruning_service_pb2.UploadDatasetRequest(data=data[off:off + CHUNK])

        try:
            return self._stub.UploadDataset(requests(), timeout=self.stream_timeout,
                                            metadata=self._metadata)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None

    def upload_model(self, directory, name=None):
        """Stores a model directory in the scheduler (UploadModel): every file is hashed, the
        scheduler says which it lacks, and only those are sent; a rerun after an interruption
        resumes file by file. Returns the UploadModelResponse; its model_uri
        ("blob://sha256:...") is what submit(model_uri=...) takes."""
        if not os.path.isdir(directory):
            raise errors.InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT,
                                         "%s: not a directory" % directory)
        manifest = pruning_service_pb2.ModelManifestInfo(
            name=name or os.path.basename(os.path.normpath(directory)))
        paths = {}
        for root, _, files in os.walk(directory, followlinks=True):
            for f in sorted(files):
                full = os.path.join(root, f)
                rel = os.path.relpath(full, directory).replace(os.sep, "/")
                sha = _sha256_file(full)
                manifest.files.add(path=rel, size_bytes=os.path.getsize(full), sha256=sha)
                paths.setdefault(sha, full)

        def call(missing):
            def requests():
                yield pruning_service_pb2.UploadModelRequest(manifest=manifest)
                for sha in missing:
                    with open(paths[sha], "rb") as f:
                        first = True
                        while True:
                            chunk = f.read(CHUNK)
                            if not chunk and not first:
                                break
                            first = False
                            yield pruning_service_pb2.UploadModelRequest(
                                data=pruning_service_pb2.ModelFileData(sha256=sha, data=chunk))
                            if len(chunk) < CHUNK:
                                break
            try:
                return self._stub.UploadModel(requests(), timeout=self.stream_timeout,
                                              metadata=self._metadata)
            except grpc.RpcError as e:
                raise errors.from_rpc_error(e) from None

        probe = call([])
        if not probe.missing_sha256:
            return probe
        return call(list(probe.missing_sha256))

    def watch(self, job_id, from_sequence=0, max_backoff=5.0, give_up_after=None):
        """Yields the job's events after `from_sequence` until its terminal state's event. A
        dropped connection (UNAVAILABLE, a stream deadline) reconnects with backoff from the last
        sequence yielded: no event twice, none lost. `give_up_after` seconds of failed
        reconnecting raise Unavailable (None = keep trying)."""
        seq = from_sequence
        backoff = 0.2
        failing_since = None
        while True:
            req = pruning_service_pb2.WatchJobRequest(job_id=job_id, from_sequence=seq)
            try:
                for event in self._stub.WatchJob(req, timeout=self.stream_timeout,
                                                 metadata=self._metadata):
                    failing_since = None
                    backoff = 0.2
                    if event.sequence <= seq:
                        continue
                    seq = event.sequence
                    yield event
                    if is_terminal_event(event):
                        return
                # Ended without the terminal event (the server restarted cleanly): go on.
            except grpc.RpcError as e:
                if e.code() not in _RETRYABLE:
                    raise errors.from_rpc_error(e) from None
                now = time.monotonic()
                failing_since = failing_since or now
                if give_up_after is not None and now - failing_since > give_up_after:
                    raise errors.from_rpc_error(e) from None
            time.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)

    def wait(self, job_id, on_event=None):
        """Watches to the end and returns the final Job."""
        for event in self.watch(job_id):
            if on_event is not None:
                on_event(event)
        return self.get(job_id)

    def fetch(self, job_id, out_dir, retries=8):
        """Downloads a SUCCEEDED job's artifact into `out_dir` (which must not exist or be empty):
        into OUT.partial/artifact.tar, resuming from its size after a dropped connection or on a
        re-run; checks the whole file's sha256 against the trailer and the job, unpacks it
        (absolute paths, `..`, links refused), checks MANIFEST.sha256, then renames. Returns
        out_dir."""
        if os.path.isdir(out_dir) and os.listdir(out_dir):
            raise errors.FailedPrecondition(grpc.StatusCode.FAILED_PRECONDITION,
                                            f"{out_dir} exists and is not empty")
        job = self.get(job_id)
        if job.state != job_pb2.SUCCEEDED or not job.artifact_id:
            raise errors.FailedPrecondition(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job {job_id} is {job_pb2.JobState.Name(job.state)}: only a SUCCEEDED job has an "
                "artifact")
        partial = out_dir.rstrip("/") + ".partial"
        os.makedirs(partial, exist_ok=True)
        tar_path = os.path.join(partial, "artifact.tar")
        trailer = self._download(job.artifact_id, tar_path, retries)
        digest = _sha256_file(tar_path)
        for name, want in (("the trailer", trailer), ("the job", job.artifact_sha256)):
            want = want[7:] if want.startswith("sha256:") else want
            if want and want != digest:
                os.remove(tar_path)  # a corrupt download is not resumed
                raise errors.DataLoss(grpc.StatusCode.DATA_LOSS,
                                      f"artifact sha256 {digest} does not match {name}'s {want}")
        tree = os.path.join(partial, "tree")
        shutil.rmtree(tree, ignore_errors=True)
        os.makedirs(tree)
        _safe_extract(tar_path, tree)
        _verify_manifest(tree)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)
        os.rename(tree, out_dir)
        shutil.rmtree(partial, ignore_errors=True)
        return out_dir

    def _download(self, artifact_id, tar_path, retries):
        """Appends the artifact's bytes from the file's current size; returns the trailer's
        sha256."""
        backoff = 0.2
        for attempt in range(retries + 1):
            offset = os.path.getsize(tar_path) if os.path.exists(tar_path) else 0
            req = pruning_service_pb2.FetchArtifactRequest(artifact_id=artifact_id, offset=offset)
            try:
                trailer = ""
                with open(tar_path, "ab") as out:
                    for msg in self._stub.FetchArtifact(req, timeout=self.stream_timeout,
                                                        metadata=self._metadata):
                        if msg.HasField("trailer"):
                            trailer = msg.trailer.sha256
                        elif msg.data:
                            out.write(msg.data)
                return trailer
            except grpc.RpcError as e:
                if e.code() not in _RETRYABLE or attempt == retries:
                    raise errors.from_rpc_error(e) from None
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
        raise AssertionError("unreachable")
