"""DKIM signing cost per ~2 KB message (issue 14 §1; target: at most 1 ms CPU with RSA-2048).

What the intake does per message, in-process: split the header, find the From: domain, choose
the keys, canonicalize (relaxed/relaxed), hash the body and sign (``DkimSigner``, OpenSSL through
``cryptography``). CPU time (``time.process_time``) over ``--messages`` messages, ``--rounds``
times; the median round is reported per message, for RSA-2048, Ed25519 and both (dual signing),
and, with ``--dkimpy``, dkimpy's ``dkim.sign`` with the same RSA key for comparison.

    .venv/bin/python bench/dkim_sign_cost.py [--messages 2000] [--rounds 7] [--dkimpy]
        [--json-out bench/results/dkim-sign-cost.jsonl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from mxroute.identity.dkim import canon
from mxroute.identity.dkim.keys import generate, load_key, write_key
from mxroute.identity.dkim.sign import DkimSigner, SigningKey
from mxroute.settings import DkimKey

HEAD = (b"From: Sender <a@example.com>\r\nTo: u@dest.example\r\nSubject: benchmark message\r\n"
        b"Date: Thu, 03 Dec 2026 03:00:00 +0000\r\nMessage-ID: <%d@example.com>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
BODY = b"".join(b"%05d " % i + b"x" * 64 + b"\r\n" for i in range(27))  # ~2 KB with HEAD


def keys(tmp: Path) -> dict[str, SigningKey]:
    out = {}
    for algorithm in ("rsa", "ed25519"):
        path = tmp / f"{algorithm}.pem"
        write_key(generate(algorithm), path)
        out[algorithm] = SigningKey(DkimKey(domain="example.com", selector=algorithm,
                                            key_file=path), load_key(path))
    return out


def round_cost(signer: DkimSigner, messages: list[bytes]) -> float:
    """CPU seconds per message for one pass over ``messages`` (what the intake does)."""
    start = time.process_time()
    for message in messages:
        parsed = canon.split_message(message)
        author = canon.author_domain(parsed)
        signer.sign_parsed(parsed, signer.keys_for(author), author)
    return (time.process_time() - start) / len(messages)


def dkimpy_cost(path: Path, messages: list[bytes]) -> float:
    import dkim

    pem = path.read_bytes()
    start = time.process_time()
    for message in messages:
        dkim.sign(message, b"rsa", b"example.com", pem,
                  canonicalize=(b"relaxed", b"relaxed"))
    return (time.process_time() - start) / len(messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dkimpy", action="store_true", help="also time dkimpy's dkim.sign")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    messages = [HEAD % i + BODY for i in range(args.messages)]
    size = statistics.median(len(m) for m in messages)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        made = keys(Path(tmp))
        for name, chosen in (("rsa-2048", [made["rsa"]]), ("ed25519", [made["ed25519"]]),
                             ("rsa-2048+ed25519", [made["rsa"], made["ed25519"]])):
            signer = DkimSigner(chosen)
            round_cost(signer, messages[:50])  # warm up
            costs = [round_cost(signer, messages) for _ in range(args.rounds)]
            results[name] = statistics.median(costs) * 1000
        if args.dkimpy:
            few = messages[: max(1, args.messages // 20)]
            results["dkimpy rsa-2048"] = statistics.median(
                dkimpy_cost(made["rsa"].private.path, few) for _ in range(3)) * 1000
    for name, ms in results.items():
        print(f"{name:<20} {ms:7.3f} ms CPU per {size:.0f}-byte message "
              f"(median of {args.rounds if 'dkimpy' not in name else 3} rounds)")
    if args.json_out:
        with open(args.json_out, "a", encoding="utf-8") as out:
            out.write(json.dumps({"bench": "dkim_sign_cost", "message_bytes": size,
                                  "messages": args.messages, "rounds": args.rounds,
                                  "ms_cpu_per_message": results}) + "\n")


if __name__ == "__main__":
    main()
