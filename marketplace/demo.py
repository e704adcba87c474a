"""`quorumserve demo` (the README's `make demo`): a whole marketplace in a few minutes.

1. trains four heterogeneous digits models (different architectures and seeds);
2. starts a group of four replica processes, each with its own Triton and its own model, and a
   gateway; one replica (3) is made to lie: it answers every request with the wrong class;
3. sends the held-out digits through the stock `tritonclient` (KServe v2 gRPC), as any Triton
   user would;
4. prints the accuracy of the certified decisions next to each single model's accuracy;
5. shows the lying replica outvoted, with its own signed wrong votes as evidence;
6. verifies every certificate offline and writes them (and the evidence) to a folder;
7. shuts everything down.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

LIAR = 3
ROWS_PER_CALL = 32


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="train four models, start a group with one lying replica, certify the held-out digits")
    parser.add_argument("--data-dir", default="demo-data", help="keys, models, replica state (reused between runs)")
    parser.add_argument("--out", default="demo-out", help="where certificates and evidence are written")
    parser.add_argument("--count", type=int, default=0, help="how many held-out digits to send (default: all)")
    parser.add_argument("--log-level", default="WARNING")
    parser.set_defaults(handler=run_demo)


def _say(text: str = "") -> None:
    print(text, flush=True)


def run_demo(args: argparse.Namespace) -> int:
    import numpy as np
    import tritonclient.grpc as triton

    from certs.certificate import certificate_to_json, decode_certificate
    from certs.errors import CertificateError
    from certs.request import request_to_json
    from certs.verify import verify
    from marketplace.commands import start_gateway_process
    from marketplace.local import LocalGroup, LocalGroupError, free_ports
    from marketplace.models import held_out_digits
    from marketplace.sdk import ReplicaClient, build_request
    from replica.cli import configure_logging

    configure_logging(args.log_level, prefix="[demo] ")
    data_dir = Path(args.data_dir).expanduser().resolve()
    out_dir = Path(args.out).expanduser().resolve()
    shutil.rmtree(out_dir, ignore_errors=True)
    (out_dir / "certificates").mkdir(parents=True)
    (out_dir / "evidence").mkdir(parents=True)
    # each run starts from an empty ledger and log; the trained models are kept
    for stale in data_dir.glob("replica-*"):
        if stale.is_dir():
            shutil.rmtree(stale)

    _say("== 1. four owners train their own models (same task, different architectures and seeds)")
    group = LocalGroup(data_dir, progress=True, misbehave={LIAR: "wrong-labels"}, log_level=args.log_level)
    gateway = None
    started_s = time.monotonic()
    try:
        config = group.prepare()
        accuracy_trained = _trained_accuracies(data_dir, group)
        for rid, accuracy in accuracy_trained.items():
            _say(f"   replica {rid}: {group.replicas[rid].config.model_package.name:<28} held-out accuracy {accuracy:6.1%}")

        _say(f"\n== 2. starting the group: {group.n} replica processes (f={config.f}), each with its own Triton, and a gateway")
        _say(f"   replica {LIAR} is set to lie: every answer it gives is shifted to the next class")
        group.start()
        gateway = start_gateway_process([group.group_config_path], metrics_port=free_ports(1)[0], log_path=data_dir / "gateway.log")
        _say(f"   gateway {gateway.address} (KServe v2), group config {group.group_config_path}")

        X, y = held_out_digits(0)
        count = len(X) if args.count <= 0 else min(args.count, len(X))
        _say(f"\n== 3. sending {count} held-out digits through the stock tritonclient, {ROWS_PER_CALL} rows per call")
        client = triton.InferenceServerClient(gateway.address)
        labels: list[int] = []
        certificates: list[bytes] = []
        sent_s = time.monotonic()
        for start in range(0, count, ROWS_PER_CALL):
            rows = X[start : start + ROWS_PER_CALL].astype(np.float32)
            tensor = triton.InferInput(config.task.input_name, list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows)
            result = client.infer(config.group_id, [tensor], request_id=f"demo-{start}", parameters={"client_id": "demo"})
            labels.extend(int(v) for v in result.as_numpy("label"))
            parameters = result.get_response().parameters
            certificates.extend(base64.b64decode(parameters[f"certificate_{i}"].string_param) for i in range(len(rows)))
            print(f"\r   certified {len(labels)}/{count}", end="", flush=True)
        elapsed_s = time.monotonic() - sent_s
        _say(f"\r   certified {count}/{count} in {elapsed_s:.1f} s ({count / elapsed_s:.0f} requests/s on this machine)")

        _say("\n== 4. accuracy: certified decisions against each single model")
        decoded = [decode_certificate(c) for c in certificates]
        votes_right = {rid: 0 for rid in config.replica_ids}
        votes_seen = {rid: 0 for rid in config.replica_ids}
        for certificate, truth in zip(decoded, y[:count]):
            for vote in certificate.leaf.votes:
                votes_seen[vote.replica_id] += 1
                votes_right[vote.replica_id] += int(vote.output.label == truth)
        certified_accuracy = float(np.mean(np.array(labels) == y[:count]))
        _say(f"   certified decisions          {certified_accuracy:6.1%}  (every one signed by {config.quorum_size} of {config.n} replicas)")
        for rid in config.replica_ids:
            seen = votes_seen[rid]
            as_voted = votes_right[rid] / seen if seen else float("nan")
            tag = "   <- lying" if rid == LIAR else ""
            _say(f"   replica {rid} as it voted       {as_voted:6.1%}  ({seen} signed votes){tag}")

        _say(f"\n== 5. replica {LIAR} is outvoted; its own signed wrong votes are the evidence")
        fanout = ReplicaClient(group.addresses, config, client_id="demo")
        shown = 0
        for index, certificate in enumerate(decoded):
            liar = [v for v in certificate.leaf.votes if v.replica_id == LIAR]
            if not liar or liar[0].output.label == certificate.leaf.decision.label:
                continue
            full = fanout.get_certificate(certificate.leaf.request_id).certificate
            verified = verify(full, config)
            proof = next(p for p in full.vote_proofs if p.voter == LIAR)
            path = out_dir / "evidence" / f"replica-{LIAR}-vote-{certificate.leaf.request_id.replace('/', '-')}.json"
            path.write_text(json.dumps(certificate_to_json(full, config), indent=2))
            if shown < 3:
                _say(
                    f"   request {certificate.leaf.request_id}: digit {y[index]}, certified {verified.label_name}; "
                    f"replica {LIAR} signed '{config.task.class_labels[liar[0].output.label]}' "
                    f"(vote batch {proof.batch_no}, signature {proof.signature.hex()[:16]}...)"
                )
            shown += 1
        _say(f"   {shown} certificates carry a signed wrong vote of replica {LIAR}; written to {out_dir / 'evidence'}")
        fanout.close()

        _say("\n== 6. verifying every certificate offline against the pinned group config")
        invalid = 0
        for index, (raw, certificate) in enumerate(zip(certificates, decoded)):
            # the request exactly as the gateway built it from row `index`: the client's own copy
            request = build_request(config, X[index], client_id="demo", request_id=certificate.leaf.request_id)
            try:
                verify(certificate, config, request)
            except CertificateError as exc:
                invalid += 1
                _say(f"   INVALID {certificate.leaf.request_id}: {exc}")
            name = certificate.leaf.request_id.replace("/", "-")
            (out_dir / "certificates" / f"{name}.pb").write_bytes(raw)
            (out_dir / "certificates" / f"{name}.request.json").write_text(json.dumps(request_to_json(request)))
        shutil.copy(group.group_config_path, out_dir / "group.json")
        example = out_dir / "certificates" / f"{decoded[0].leaf.request_id.replace('/', '-')}"
        _say(f"   {len(certificates) - invalid} of {len(certificates)} certificates verify "
             f"(median size {int(np.median([len(c) for c in certificates]))} bytes); written to {out_dir / 'certificates'}")
        _say(f"   check one yourself: quorumserve verify {example}.pb --config {out_dir / 'group.json'} --request {example}.request.json")
        return 0 if invalid == 0 else 1
    except LocalGroupError as exc:
        print(f"quorumserve demo: {exc}", file=sys.stderr)
        return 1
    finally:
        _say("\n== 7. shutting down")
        if gateway is not None:
            gateway.stop()
        group.stop()
        _say(f"   done in {time.monotonic() - started_s:.0f} s; no replica, Triton or gateway process is left")


def _trained_accuracies(data_dir: Path, group: Any) -> dict[int, float]:
    """Each model's held-out accuracy, measured locally with plain torch."""
    from marketplace.models import held_out_digits, predict
    from replica.model_spec import load_model_package

    import numpy as np

    X, y = held_out_digits(0)
    accuracies = {}
    for replica in group.replicas:
        package = load_model_package(replica.config.model_package)
        accuracies[replica.replica_id] = float(np.mean(predict(package, X) == y))
    return accuracies
