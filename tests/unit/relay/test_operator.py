"""The queue operator's pure parts (issue 15 B): ID prefixes, requests, the held flag on disk.
The actions themselves run through the real CLI and serve: tests/e2e/test_queue_control.py."""

from __future__ import annotations

import pytest

from mxroute.errors import EX_NOINPUT, EX_USAGE
from mxroute.relay.queue.operator import Request, SelectionError, resolve
from mxroute.relay.spool.format import MessageMeta, RecipientState, decode, encode, encode_state

KNOWN = ["0001AAAA0001", "0001AAAA0002", "0002BBBB0001"]


def test_an_exact_id_or_a_unique_prefix_names_one_message_once() -> None:
    assert resolve(KNOWN, ["0002", "0001AAAA0001", "0002BBBB0001"]) == [
        "0002BBBB0001", "0001AAAA0001"]


def test_an_ambiguous_prefix_is_a_usage_error_listing_the_matches() -> None:
    with pytest.raises(SelectionError) as error:
        resolve(KNOWN, ["0001"])
    assert error.value.exit_code == EX_USAGE
    assert "0001AAAA0001" in error.value.message and "0001AAAA0002" in error.value.message


@pytest.mark.parametrize("name", ["0003", ""])
def test_a_name_matching_nothing_is_no_input(name: str) -> None:
    with pytest.raises(SelectionError) as error:
        resolve(KNOWN, [name])
    assert error.value.exit_code == EX_NOINPUT


def test_requests_round_trip_and_unknown_actions_are_refused() -> None:
    request = Request("bounce", ["0001"], reason="spam")
    assert Request.from_json(request.to_json()) == request
    assert Request("flush").everything and not Request("flush", domain="x.test").everything
    with pytest.raises(SelectionError):
        Request.from_json({"op": "explode"})


def test_held_is_part_of_the_state_frame_and_old_files_are_not_held() -> None:
    """issue 15 B: hold survives a restart (the last S frame carries it)."""
    meta = MessageMeta("0001AAAA0001", "a@x.test", 1.0, [RecipientState("b@y.test")])
    data = encode(meta, b"m\r\n")
    assert decode(data, meta.queue_id)[0].held is False
    meta.held = True
    held = data + encode_state(meta)
    assert decode(held, meta.queue_id)[0].held is True
    meta.held = False
    assert decode(held + encode_state(meta), meta.queue_id)[0].held is False
