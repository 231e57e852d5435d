#!/usr/bin/python3
"""Prune a model on a prunesvc scheduler from Python: upload the samples, submit, watch, fetch.

    PYTHONPATH=build/python client/python/examples/prune_and_fetch.py \
        --addr 127.0.0.1:50051 --model models/tiny-llava-shapes --samples /tmp/shapes-search \
        --flops-budget 0.5 --out /tmp/pruned [--job-file job.yaml] [--set population=8 ...]

A scheduler with --auth-tokens / TLS takes PRUNESVC_TOKEN and PRUNESVC_TLS_CA from the
environment. Exit 0 when the job SUCCEEDED and its artifact is in --out.
"""
import argparse
import json
import os
import sys

import prunesvc


def value(text):
    """--set values: JSON when they parse (numbers, true, lists), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--addr", default="127.0.0.1:50051")
    ap.add_argument("--model", required=True, help="model directory or file:// URI")
    ap.add_argument("--samples", required=True, help="search samples (directory or tar)")
    ap.add_argument("--eval-samples", help="held-out samples for the artifact's accuracy")
    ap.add_argument("--flops-budget", type=float, default=0.5)
    ap.add_argument("--job-file", help="a YAML or JSON job file (JobSpec field names)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="any other JobSpec field, e.g. --set population=8 --set strategy=UNIFORM")
    ap.add_argument("--out", required=True, help="where the pruned model is unpacked")
    args = ap.parse_args()

    with prunesvc.Client(args.addr) as client:
        dataset = client.upload_dataset(args.samples)
        print(f"samples: {dataset.dataset_id} ({dataset.num_samples} samples)", file=sys.stderr)
        fields = {"model_uri": args.model, "dataset_id": dataset.dataset_id,
                  "flops_budget": args.flops_budget}
        if args.eval_samples:
            fields["eval_dataset_id"] = client.upload_dataset(args.eval_samples).dataset_id
        for item in args.set:
            key, _, text = item.partition("=")
            fields[key] = value(text)
        job = client.submit(args.job_file, **fields)
        print(f"job: {job.job_id}", file=sys.stderr)

        def show(event):
            if event.HasField("generation_finished"):
                g = event.generation_finished
                print(f"  generation {g.generation + 1}/{g.generations_total}: best accuracy "
                      f"{g.best.accuracy:.3f} at FLOPs {g.best.flops_ratio:.3f}", file=sys.stderr)
            elif event.HasField("state_changed"):
                print(f"  {prunesvc.job_pb2.JobState.Name(event.state_changed.to)}: "
                      f"{event.state_changed.reason}", file=sys.stderr)

        final = client.wait(job.job_id, on_event=show)
        if final.state != prunesvc.job_pb2.SUCCEEDED:
            print(f"job {job.job_id} ended {prunesvc.job_pb2.JobState.Name(final.state)}: "
                  f"{final.error}", file=sys.stderr)
            return 1
        client.fetch(job.job_id, args.out)
        with open(os.path.join(args.out, "report.json")) as f:
            json.load(f)  # the artifact's report (docs/artifact.md) is there and parses
        print(json.dumps({"job_id": job.job_id, "out": args.out,
                          "flops_ratio": round(final.best.flops_ratio, 4),
                          "search_accuracy": round(final.best.accuracy, 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
