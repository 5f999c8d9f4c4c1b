"""mxroute's own notices are DKIM-signed (issue 14 §1): a delay warning and a bounce spooled by the
``Notifier`` carry a signature of the reporting domain's key (From: MAILER-DAEMON@helo_name,
relaxed alignment to the key's domain) that dkimpy verifies; without a key they go unsigned."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dkim
import pytest

from mxroute.identity.dkim import canon
from mxroute.identity.dkim.keys import generate, load_key, write_key
from mxroute.identity.dkim.record import build_txt
from mxroute.identity.dkim.sign import DkimSigner, SigningKey
from mxroute.relay import dsn
from mxroute.relay.envelope import Disposition, RecipientResult
from mxroute.relay.queue.notices import Notifier
from mxroute.relay.queue.settle import Timing
from mxroute.relay.spool.format import MessageMeta, RecipientState
from mxroute.relay.spool.store import Spool
from mxroute.settings import DkimKey

ORIGINAL = b"From: a@sender.test\r\nTo: u@dest.test\r\nSubject: hi\r\n\r\nbody\r\n"


def notifier(tmp_path: Path, signer: DkimSigner | None) -> tuple[Notifier, Spool]:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    timing = Timing(retry_min=60, retry_max=600, queue_lifetime=3600, bounce_lifetime=3600,
                    delay_warning=60)
    stats = {"bounced": 0, "dsn": 0}
    return Notifier(spool, reporting_mta="mx1.relay.test", timing=timing, clock=lambda: 1000.0,
                    schedule=lambda meta: None, stats=stats, builder=dsn.build_dsn,
                    signer=signer), spool


def meta() -> MessageMeta:
    return MessageMeta(queue_id="QUEUE0001", sender="a@sender.test", arrival=900.0,
                       recipients=[RecipientState("u@dest.test")], ret="FULL")


@pytest.mark.parametrize("kind", ["warn", "bounce"])
def test_notices_are_signed_with_the_reporting_domains_key(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "k.pem"
    write_key(generate("rsa"), path)
    key = SigningKey(DkimKey(domain="relay.test", selector="s1", key_file=path), load_key(path))
    signer = DkimSigner([key])
    notices, spool = notifier(tmp_path, signer)
    message = meta()
    result = RecipientResult("u@dest.test", Disposition.DEFERRED if kind == "warn"
                             else Disposition.BOUNCED, "4.4.1", "451 4.4.1 later")
    items = [(message.recipients[0], result)]
    asyncio.run(getattr(notices, kind)(message, ORIGINAL, items))
    _, body = spool.load("QUEUE0001B0")
    tags = canon.tags(canon.split_message(body).values("dkim-signature")[0])
    assert (tags["d"], tags["s"], tags["a"]) == ("relay.test", "s1", "rsa-sha256")
    record = build_txt("rsa", key.private.public_b64()).encode()
    assert dkim.verify(body, dnsfunc=lambda name, timeout=5: record)
    assert signer.stats.signed[("relay.test", "s1")] == 1


def test_no_key_no_signature(tmp_path: Path) -> None:
    notices, spool = notifier(tmp_path, DkimSigner([]))
    message = meta()
    result = RecipientResult("u@dest.test", Disposition.DEFERRED, "4.4.1", "451 4.4.1 later")
    asyncio.run(notices.warn(message, ORIGINAL, [(message.recipients[0], result)]))
    assert b"DKIM-Signature" not in spool.load("QUEUE0001B0")[1]
