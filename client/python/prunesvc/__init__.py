"""prunesvc: the Python client for the prunesvc scheduler (docs/python.md).

    import prunesvc
    c = prunesvc.Client("127.0.0.1:50051")          # token: PRUNESVC_TOKEN, CA: PRUNESVC_TLS_CA
    ds = c.upload_dataset("samples/").dataset_id
    job = c.submit(model_uri="file:///models/m", dataset_id=ds, flops_budget=0.5)
    for event in c.watch(job.job_id):
        print(event)
    c.fetch(job.job_id, "pruned/")

The generated protobuf modules (`prune.v1.*_pb2`) are built with the project (build/python).
"""
from prune.v1 import job_pb2, pruning_service_pb2  # noqa: F401  (the message types)
from prunesvc.client import Client, TERMINAL_STATES, is_terminal_event  # noqa: F401
from prunesvc.errors import *  # noqa: F401,F403
